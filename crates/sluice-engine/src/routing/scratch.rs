//! Working memory for routing, kept between messages so that routing one allocates
//! nothing once the buffers have grown to the largest exchange graph and trie seen.

use super::topic::TopicScratch;

/// Visited marks over dense ids, cleared in `O(1)` by moving to a new generation.
#[derive(Debug, Default)]
pub(super) struct Marks {
    stamps: Vec<u32>,
    generation: u32,
}

impl Marks {
    /// Starts a new round in which no id below `len` is marked.
    pub(super) fn begin(&mut self, len: usize) {
        if self.stamps.len() < len {
            self.stamps.resize(len, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Old stamps could now collide with the new generation: forget them.
            self.stamps.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `id`; true when it was not yet marked in this round.
    pub(super) fn mark(&mut self, id: usize) -> bool {
        match self.stamps.get_mut(id) {
            Some(stamp) if *stamp != self.generation => {
                *stamp = self.generation;
                true
            }
            _ => false,
        }
    }
}

/// Reusable buffers for [`Router::route_with`](super::Router::route_with). Holding one per
/// routing task avoids even the thread-local lookup that [`Router::route`](super::Router::route)
/// does; its contents never affect the result.
#[derive(Debug, Default)]
pub struct RouteScratch {
    pub(super) exchanges: Marks,
    pub(super) worklist: Vec<usize>,
    pub(super) topic: TopicScratch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_reset_on_each_round_and_survive_generation_wrap() {
        let mut marks = Marks::default();
        marks.begin(3);
        assert!(marks.mark(1));
        assert!(!marks.mark(1));
        assert!(
            !marks.mark(7),
            "ids past the round's length are never marked"
        );
        marks.begin(3);
        assert!(marks.mark(1));
        marks.generation = u32::MAX;
        marks.begin(3);
        assert_eq!(marks.generation, 1);
        assert!(marks.mark(1));
        assert!(marks.mark(2));
    }
}

"""Fixtures for the hostile-input suite: each test module starts its own `sluice serve`
(SLUICE_BIN, default target/debug/sluice) on a temporary data directory and free
loopback ports, with the small limits it needs set through SLUICE_* environment
variables, and every case runs inside `survives(...)`, the one after-each-case check:

  (a) the broker process is still alive, and reported no panic on stderr (a panicking
      connection task does not end the process, but it is a bug all the same),
  (b) a real client still completes a round trip on every protocol: pika publishes to and
      gets from a fresh queue, kafka-python produces one record to a fresh topic and a
      kafka-python consumer reads it back,
  (c) resident memory stayed bounded: VmRSS (from /proc/<pid>/status), sampled every
      20 ms for the whole case, never grew more than the case's explicit bound over its
      value when the case started (measured on a broker warmed up by one round trip on
      each protocol at start).

The RSS numbers of every case are printed in the terminal summary.
"""

import pytest

from hostile_broker import Survives, _raise_nofile, _results, _running


def pytest_configure(config):
    _raise_nofile()


@pytest.fixture
def survives(request):
    """`survives(broker, rss_growth_mib=64)` -> the context manager that checks a case."""

    def make(broker, rss_growth_mib=64):
        return Survives(request.node.nodeid, broker, rss_growth_mib)

    return make


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # A failing case gets the running brokers' recent stderr attached.
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for b in _running:
            state = "alive" if b.alive() else f"exited {b.proc.returncode}"
            report.sections.append((f"sluice {b.label} ({state}) stderr, last 40 lines", b.tail(40)))


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    tr = terminalreporter
    tr.section("VmRSS per case (MiB)")
    tr.write_line(f"{'case':<72} {'warm':>6} {'start':>6} {'peak':>6} {'growth':>6} {'bound':>5} {'secs':>5}  verdict")
    for r in _results:
        peak = r["peak"] if r["peak"] is not None else r["start"]
        growth = peak - r["start"]
        case = r["case"].split("::", 1)[-1]
        tr.write_line(f"{case[:72]:<72} {r['warm'] or 0:6.1f} {r['start']:6.1f} {peak:6.1f} {growth:6.1f} "
                      f"{r['bound']:5} {r['seconds']:5.1f}  {r['verdict']}")

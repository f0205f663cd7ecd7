// The official RocketMQ 5 Node.js client against Sluice: sends normal, tagged, keyed,
// FIFO and delayed messages, receives them with a SimpleConsumer (tag filter), acks
// them, and prints what it saw as one JSON line for the Python test to check.
//
//   node roundtrip.js <endpoint> <topic> <group>
'use strict';

const { Producer, SimpleConsumer } = require('rocketmq-client-nodejs');

async function main() {
  const [endpoints, topic, group] = process.argv.slice(2);
  const producer = new Producer({ endpoints, topics: [topic] });
  await producer.startup();
  const sent = [];
  for (let i = 0; i < 3; i++) {
    const receipt = await producer.send({
      topic,
      tag: 'node',
      keys: [`key-${i}`],
      properties: new Map([['n', String(i)]]),
      body: Buffer.from(`normal-${i}`),
    });
    sent.push(receipt.messageId);
  }
  sent.push((await producer.send({ topic, tag: 'node', messageGroup: 'g1', body: Buffer.from('fifo-0') })).messageId);
  sent.push((await producer.send({ topic, tag: 'node', delay: 1500, body: Buffer.from('delayed-0') })).messageId);
  await producer.send({ topic, tag: 'other', body: Buffer.from('filtered-out') });
  await producer.shutdown();

  const consumer = new SimpleConsumer({
    endpoints,
    consumerGroup: group,
    subscriptions: new Map([[topic, 'node']]),
    awaitDuration: 2000,
  });
  await consumer.startup();
  const received = [];
  const deadline = Date.now() + 20000;
  while (received.length < sent.length && Date.now() < deadline) {
    for (const m of await consumer.receive(16, 15000)) {
      received.push({
        messageId: m.messageId,
        body: m.body.toString(),
        tag: m.tag,
        keys: m.keys,
        n: m.properties.get('n') ?? null,
        corrupted: Boolean(m.corrupted),
      });
      await consumer.ack(m);
    }
  }
  await consumer.shutdown();
  console.log(JSON.stringify({ sent, received }));
}

main().then(() => process.exit(0), (err) => {
  console.error(err);
  process.exit(1);
});

// Publish one Warren job over plain AMQP (docs/wire-contract.md); print its job id once confirmed.
// Usage: node publish.js [TASK [PAYLOAD_JSON]]   (default: demo.sleep '{"ms": 50}')
const amqp = require("amqplib");
const { randomUUID } = require("crypto");

async function main() {
  const [task = "demo.sleep", json = '{"ms": 50}'] = process.argv.slice(2);
  const ns = process.env.WARREN_NAMESPACE || "warren";
  const conn = await amqp.connect(process.env.AMQP_URL || "amqp://guest:guest@127.0.0.1:5672/%2f");
  const ch = await conn.createConfirmChannel();
  let returned = false;
  ch.on("return", () => { returned = true; }); // mandatory: the broker returns an unroutable message
  const jobId = randomUUID(); // the job id: a job id that succeeded never runs again
  ch.publish(`${ns}.jobs`, task, Buffer.from(JSON.stringify(JSON.parse(json))), {
    contentType: "application/json",
    persistent: true, // delivery_mode = 2
    messageId: jobId,
    timestamp: Math.floor(Date.now() / 1000),
    mandatory: true,
  });
  await ch.waitForConfirms(); // rejects if the broker nacks; a return arrives before the confirm
  await conn.close();
  if (returned) throw new Error(`no queue is bound to task "${task}" on exchange ${ns}.jobs`);
  console.log(jobId);
}

main().catch((e) => { console.error(e.message); process.exit(1); });

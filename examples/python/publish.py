"""Publish one Warren job over plain AMQP (docs/wire-contract.md); print its job id once confirmed.

Usage: python publish.py [TASK [PAYLOAD_JSON]]   (default: demo.sleep '{"ms": 50}')
"""
import json, os, sys, time, uuid

import pika

task = sys.argv[1] if len(sys.argv) > 1 else "demo.sleep"
payload = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {"ms": 50}
ns = os.environ.get("WARREN_NAMESPACE", "warren")
conn = pika.BlockingConnection(pika.URLParameters(os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")))
ch = conn.channel()
ch.confirm_delivery()  # basic_publish now waits for the broker's confirm; raises on nack or return
job_id = str(uuid.uuid4())  # the job id: a job id that succeeded never runs again
try:
    ch.basic_publish(
        exchange=f"{ns}.jobs",
        routing_key=task,  # routing key = task name
        body=json.dumps(payload).encode(),
        properties=pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=job_id, timestamp=int(time.time())
        ),
        mandatory=True,  # no queue bound to the task -> UnroutableError instead of a silent drop
    )
except pika.exceptions.UnroutableError:
    sys.exit(f"no queue is bound to task {task!r} on exchange {ns}.jobs")
finally:
    conn.close()
print(job_id)

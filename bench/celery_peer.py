"""The Celery contender of Warren's peer benchmark (bench/peer.sh, `warren bench --peer`).

Two tasks doing what Warren's `demo.noop` and `demo.sleep {"ms": N}` do. Each appends
"<task id> <unix µs>" to $WARREN_BENCH_RECORD when its body is done; the late ack
(`task_acks_late`) follows. `warren bench` publishes the messages itself (persistent, with
publisher confirms, the same publisher as for the other contenders) into the quorum queue
$WARREN_BENCH_QUEUE, declared here exactly as the benchmark declares it, and starts
`celery -A celery_peer worker --pool prefork --concurrency C` with the prefetch multiplier
$WARREN_BENCH_PREFETCH_MULTIPLIER, so C × multiplier unacked deliveries are held, as many
as the other contenders' prefetch.
"""

import os
import time

from celery import Celery
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu import Exchange, Queue

# With a quorum queue, Celery 5.5+ sets up "native delayed delivery" at start: 28 quorum
# queues and 29 exchanges named celery_delayed_* (not under the benchmark's namespace), kept
# on the broker after the worker stops. They serve only ETA/countdown tasks, which the
# benchmark does not publish, and cost nothing per task; leaving the step out keeps a
# shared broker clean.
DelayedDelivery.include_if = lambda self, consumer: False

QUEUE = os.environ["WARREN_BENCH_QUEUE"]

app = Celery("celery_peer", broker=os.environ["WARREN_BENCH_AMQP_URL"])
app.conf.update(
    task_queues=[
        Queue(
            QUEUE,
            Exchange(QUEUE, type="direct"),
            routing_key=QUEUE,
            queue_arguments={"x-queue-type": "quorum"},
        )
    ],
    task_default_queue=QUEUE,
    task_acks_late=True,
    worker_prefetch_multiplier=int(os.environ["WARREN_BENCH_PREFETCH_MULTIPLIER"]),
    # Quorum queues have no global QoS: Celery 5.5+ then uses a per-consumer prefetch.
    worker_detect_quorum_queues=True,
    # Only matters for what Celery itself publishes (nothing here); kept for parity.
    broker_transport_options={"confirm_publish": True},
    task_default_delivery_mode="persistent",
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    # No pidbox, event or gossip queues: only the work queue is used.
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)

_record = None


def _finished(task_id):
    """Appends one line; line-buffered, so each line is one write() in O_APPEND mode."""
    global _record
    if _record is None:
        _record = open(os.environ["WARREN_BENCH_RECORD"], "a", buffering=1)
    _record.write(f"{task_id} {time.time_ns() // 1000}\n")


@app.task(name="warren_peer.noop", bind=True)
def noop(self):
    _finished(self.request.id)


@app.task(name="warren_peer.sleep", bind=True)
def sleep(self, ms):
    time.sleep(ms / 1000)
    _finished(self.request.id)

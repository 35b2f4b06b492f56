//! Dead-letter tooling (`warren dlq`): the `<ns>.<queue>.dlq` queues mirrored into the
//! PostgreSQL table `dead_letters`, listed, replayed and purged from there.
//!
//! **The queue is the truth; the mirror follows it.** Every command opens a [`Session`]:
//! under a per-namespace advisory lock (one `warren dlq` at a time), it drains each DLQ it
//! looks at with `basic.get` *without acking*, so every message is held by this channel and
//! none is seen twice, and upserts each message into the mirror (key: queue + a fingerprint
//! of message id, failure marker and body). A mirror row still `queued` that a complete
//! drain did not see has left the queue some other way: it becomes `gone`. Then:
//! - `list`/`show` read the mirror and hand every message back;
//! - `replay` republishes the chosen ones to `<ns>.jobs` (publisher confirms, `mandatory`),
//!   with their death headers and attempt counter removed so the job gets its whole retry
//!   budget, records them `replayed`, and only then acks them out of the DLQ;
//! - `purge` records them `purged` and acks them.
//!
//! What is not acked goes back to its DLQ when the session's channels close (a quorum queue
//! counts that as a redelivery; DLQs have no delivery limit, so nothing is lost). A crash
//! between the mirror update and the ack leaves the message in the queue: the next session
//! sees it and puts its row back to `queued`. A replayed job keeps its job id, so the
//! worker's ledger runs it unless that id already `succeeded` (a dead-lettered row does not
//! block it), and a renewal's handler keys its charge by the renewal's idempotency key.

mod letter;

pub use letter::{headers_json, replay_properties, Letter, Source};

use crate::{Producer, PublishError};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::{Channel, Connection};
use serde::Serialize;
use sqlx::{Connection as _, PgConnection, PgPool};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use warren_core::broker::queue_counts;
use warren_core::envelope::DeadLetterKind;
use warren_core::topology::{Topology, TopologyError};

/// Kinds RabbitMQ gives its own dead letters (`x-death` reason, `_` written `-`).
pub const BROKER_KINDS: [&str; 4] = ["delivery-limit", "rejected", "expired", "maxlen"];

/// Rows acted on per mirror update and batch of acks.
const CHUNK: usize = 64;
/// Longest wait for returned messages to show as ready before the channel closes.
const RETURN_WAIT: Duration = Duration::from_secs(10);
/// Wait after the last ack before closing, when nothing is returned (see [`Session`]).
const ACK_GRACE: Duration = Duration::from_millis(1000);

/// Why a `warren dlq` command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("{kind:?} is not a dead-letter kind; use one of: {}", known.join(", "))]
    UnknownKind { kind: String, known: Vec<String> },
    #[error("no dead letter with id {0} in the mirror (`warren dlq list` shows the ids)")]
    NotFound(i64),
    #[error("another `warren dlq` command is working on namespace {0:?}; run this one when it has finished")]
    Busy(String),
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    #[error("PostgreSQL: {0} (has `warren migrate` run?)")]
    Db(#[from] sqlx::Error),
    #[error("republishing: {0}")]
    Publish(#[from] PublishError),
}

impl DlqError {
    /// Worth running again later (a service was unavailable or busy), as opposed to bad input.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Broker(_) | Self::Db(_) | Self::Busy(_) => true,
            Self::Publish(e) => e.is_retryable(),
            Self::Topology(e) => e.is_retryable(),
            Self::UnknownKind { .. } | Self::NotFound(_) => false,
        }
    }
}

/// Which dead letters a command acts on. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Work queue short name (its DLQ is `<ns>.<queue>.dlq`).
    pub queue: Option<String>,
    pub kind: Option<String>,
    pub task: Option<String>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
}

impl Filter {
    /// The short names of the queues it covers; refuses unknown queues and kinds.
    fn queues(&self, t: &Topology) -> Result<Vec<String>, DlqError> {
        if let Some(kind) = &self.kind {
            let known = known_kinds();
            if !known.contains(kind) {
                return Err(DlqError::UnknownKind {
                    kind: kind.clone(),
                    known,
                });
            }
        }
        Ok(match &self.queue {
            Some(q) => vec![t.queue(q)?.name.clone()],
            None => t.queues().iter().map(|q| q.name.clone()).collect(),
        })
    }
}

fn known_kinds() -> Vec<String> {
    let mut v: Vec<String> = DeadLetterKind::ALL
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    for b in BROKER_KINDS {
        if !v.iter().any(|k| k == b) {
            v.push(b.to_owned());
        }
    }
    v.push("unknown".into());
    v
}

/// One mirror row, as `list` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Row {
    pub id: i64,
    pub queue: String,
    pub message_id: Option<String>,
    pub task: Option<String>,
    pub source: String,
    pub kind: String,
    pub error: String,
    pub attempts: i32,
    pub failed_at: DateTime<Utc>,
    pub state: String,
    pub copies: i32,
    pub replayed_at: Option<DateTime<Utc>>,
    pub purged_at: Option<DateTime<Utc>>,
}

/// One mirror row with its headers and payload, as `show` prints it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Detail {
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub row: Row,
    pub headers: serde_json::Value,
    #[serde(skip)]
    pub payload: Vec<u8>,
    pub payload_json: Option<serde_json::Value>,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub gone_at: Option<DateTime<Utc>>,
}

/// What a session's drain found in one DLQ.
#[derive(Debug, Clone, Serialize)]
pub struct Synced {
    pub queue: String,
    /// Messages held (copies included).
    pub messages: usize,
    /// Mirror rows created by this drain.
    pub new: usize,
    /// Rows that a complete drain did not find (removed outside `warren dlq`).
    pub gone: usize,
    /// Messages of rows already replayed or purged (an earlier ack lost), acked now.
    pub resettled: usize,
    /// False when `max_scan` stopped the drain before the queue was empty.
    pub complete: bool,
}

/// Options of a replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Choose and count, publish nothing, ack nothing.
    pub dry_run: bool,
    /// Most messages republished per second.
    pub rate: Option<f64>,
    /// Most rows (dead letters) replayed.
    pub limit: Option<u64>,
}

/// What replay or purge did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Rows chosen by the filter (after the limit).
    pub chosen: Vec<Row>,
    /// Rows done (replayed or purged) and the messages that were acked for them.
    pub done: usize,
    pub messages: usize,
    /// Rows left in their DLQ, with why.
    pub failed: Vec<(i64, String)>,
    /// Chosen rows not held by this session (the drain stopped at max_scan first).
    pub not_reached: usize,
}

/// Progress of a replay or purge: rows done so far of the total.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// The dead-letter tooling of one namespace.
pub struct Dlq {
    topology: Topology,
    pool: PgPool,
    conn: Connection,
    max_scan: usize,
}

/// Messages held from one DLQ, each with its mirror row.
struct Held {
    /// The DLQ's broker name.
    name: String,
    channel: Channel,
    items: Vec<(i64, Delivery)>,
    /// Ready messages the drain left in the queue (beyond `max_scan`).
    left: u32,
}

/// A drain in progress: the advisory lock and the held messages. Dropping it returns every
/// message not acked (closing the channels does that on the broker).
pub struct Session {
    lock: PgConnection,
    held: Vec<Held>,
    pub synced: Vec<Synced>,
}

impl Session {
    fn row_messages(&self) -> HashMap<i64, Vec<(usize, usize)>> {
        let mut m: HashMap<i64, Vec<(usize, usize)>> = HashMap::new();
        for (qi, h) in self.held.iter().enumerate() {
            for (di, (id, _)) in h.items.iter().enumerate() {
                m.entry(*id).or_default().push((qi, di));
            }
        }
        m
    }

    /// Hands back every message not in `acked` (queue index, item index) and releases the
    /// lock.
    ///
    /// A quorum queue applies acks and returns asynchronously, and a channel closing
    /// returns whatever it still holds: closed too soon, it could return messages just
    /// acked. So the rest are returned explicitly first (after the acks, on the same
    /// channel, so applied after them) and the channel closes once the queue shows them
    /// ready again; with nothing to return, it waits [`ACK_GRACE`]. An ack lost anyway is
    /// settled by the next session (see [`Dlq::open`]).
    async fn close(self, acked: &HashSet<(usize, usize)>) {
        for (qi, h) in self.held.iter().enumerate() {
            let rest: Vec<u64> = (0..h.items.len())
                .filter(|di| !acked.contains(&(qi, *di)))
                .map(|di| h.items[di].1.delivery_tag)
                .collect();
            if let Some(&last) = rest.iter().max() {
                let nacked = h
                    .channel
                    .basic_nack(
                        last,
                        BasicNackOptions {
                            multiple: true,
                            requeue: true,
                        },
                    )
                    .await;
                let want = u64::from(h.left) + rest.len() as u64;
                let deadline = tokio::time::Instant::now() + RETURN_WAIT;
                while nacked.is_ok() && tokio::time::Instant::now() < deadline {
                    match queue_counts(&h.channel, &h.name).await {
                        Ok(c) if u64::from(c.ready) >= want => break,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        Err(_) => break,
                    }
                }
            } else if !acked.is_empty() {
                tokio::time::sleep(ACK_GRACE).await;
            }
            let _ = h.channel.close(200, "warren dlq done".into()).await;
        }
        let _ = self.lock.close().await;
    }
}

impl Dlq {
    /// `max_scan`: most messages one drain holds per DLQ (bounded memory); beyond it the
    /// drain is partial and says so.
    pub fn new(topology: Topology, pool: PgPool, conn: Connection, max_scan: usize) -> Self {
        Self {
            topology,
            pool,
            conn,
            max_scan: max_scan.max(1),
        }
    }

    /// Drains the DLQs of `queues` into the mirror, holding their messages.
    pub async fn open(&self, queues: &[String]) -> Result<Session, DlqError> {
        let mut lock = self.pool.acquire().await?.detach();
        let key = format!("warren-dlq:{}", self.topology.namespace());
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(&key)
            .fetch_one(&mut lock)
            .await?;
        if !won {
            let _ = lock.close().await;
            return Err(DlqError::Busy(self.topology.namespace().to_owned()));
        }
        let mut session = Session {
            lock,
            held: vec![],
            synced: vec![],
        };
        for q in queues {
            let (held, synced) = self.drain(q).await?;
            session.held.push(held);
            session.synced.push(synced);
        }
        Ok(session)
    }

    async fn drain(&self, queue: &str) -> Result<(Held, Synced), DlqError> {
        let name = self.topology.dlq_name(queue);
        let channel = self.conn.create_channel().await?;
        let mut deliveries = Vec::new();
        let mut complete = false;
        let mut left = 0;
        while deliveries.len() < self.max_scan {
            match channel
                .basic_get(name.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            {
                Some(m) => {
                    left = m.message_count;
                    deliveries.push(m.delivery);
                }
                None => {
                    complete = true;
                    left = 0;
                    break;
                }
            }
        }
        let letters: Vec<Letter> = deliveries.iter().map(|d| Letter::read(queue, d)).collect();
        let (ids, new) = self.upsert(queue, &letters).await?;
        // A message whose row is already replayed or purged was settled by an earlier
        // session whose ack did not stick: finish it now.
        let mut items: Vec<(i64, Delivery)> = Vec::with_capacity(deliveries.len());
        let mut resettled = 0;
        for (l, d) in letters.iter().zip(deliveries) {
            let (id, settled) = ids[&l.fingerprint];
            if settled {
                d.acker.ack(BasicAckOptions::default()).await?;
                resettled += 1;
            } else {
                items.push((id, d));
            }
        }
        let mut gone = 0;
        if complete {
            let seen: Vec<i64> = ids.values().map(|(id, _)| *id).collect();
            gone = sqlx::query(
                "UPDATE dead_letters SET state = 'gone', gone_at = now()
                  WHERE queue = $1 AND state = 'queued' AND id <> ALL($2)",
            )
            .bind(queue)
            .bind(&seen)
            .execute(&self.pool)
            .await?
            .rows_affected() as usize;
        }
        let synced = Synced {
            queue: queue.to_owned(),
            messages: items.len(),
            new,
            gone,
            resettled,
            complete,
        };
        if resettled > 0 {
            tracing::info!(
                queue,
                resettled,
                "removed dead letters already replayed or purged whose earlier ack was lost"
            );
        }
        let held = Held {
            name,
            channel,
            items,
            left,
        };
        Ok((held, synced))
    }

    /// Records the letters (one row per fingerprint); returns fingerprint → (row id,
    /// already replayed or purged) and how many rows are new.
    async fn upsert(
        &self,
        queue: &str,
        letters: &[Letter],
    ) -> Result<(HashMap<String, (i64, bool)>, usize), DlqError> {
        let mut copies: HashMap<&str, i32> = HashMap::new();
        let mut unique: Vec<&Letter> = Vec::new();
        for l in letters {
            let c = copies.entry(&l.fingerprint).or_insert(0);
            if *c == 0 {
                unique.push(l);
            }
            *c += 1;
        }
        let mut ids = HashMap::new();
        let mut new = 0;
        for batch in unique.chunks(500) {
            let col = |f: fn(&Letter) -> Option<String>| -> Vec<Option<String>> {
                batch.iter().map(|l| f(l)).collect()
            };
            let rows: Vec<(i64, String, bool, bool)> = sqlx::query_as(
                "INSERT INTO dead_letters AS d
                   (queue, fingerprint, message_id, task, source, kind, error, attempts,
                    headers, payload, payload_json, failed_at, copies)
                 SELECT $1, fp, mid, task, src, kind, err, att, hdr, body, pj,
                        COALESCE(fa, now()), cp
                   FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                               $7::text[], $8::int4[], $9::jsonb[], $10::bytea[],
                               $11::jsonb[], $12::timestamptz[], $13::int4[])
                        AS u(fp, mid, task, src, kind, err, att, hdr, body, pj, fa, cp)
                 ON CONFLICT (queue, fingerprint) DO UPDATE
                    SET state = CASE WHEN d.state IN ('replayed', 'purged') THEN d.state
                                     ELSE 'queued' END,
                        copies = EXCLUDED.copies, last_seen_at = now(), gone_at = NULL
                 RETURNING id, fingerprint, (xmax = 0), state IN ('replayed', 'purged')",
            )
            .bind(queue)
            .bind(col(|l| Some(l.fingerprint.clone())))
            .bind(col(|l| l.message_id.clone()))
            .bind(col(|l| l.task.clone()))
            .bind(col(|l| Some(l.source.as_str().to_owned())))
            .bind(col(|l| Some(l.kind.clone())))
            .bind(col(|l| Some(l.error.clone())))
            .bind(batch.iter().map(|l| l.attempts).collect::<Vec<i32>>())
            .bind(
                batch
                    .iter()
                    .map(|l| l.headers.clone())
                    .collect::<Vec<serde_json::Value>>(),
            )
            .bind(
                batch
                    .iter()
                    .map(|l| l.payload.clone())
                    .collect::<Vec<Vec<u8>>>(),
            )
            .bind(
                batch
                    .iter()
                    .map(|l| l.payload_json.clone())
                    .collect::<Vec<Option<serde_json::Value>>>(),
            )
            .bind(
                batch
                    .iter()
                    .map(|l| l.failed_at)
                    .collect::<Vec<Option<DateTime<Utc>>>>(),
            )
            .bind(
                batch
                    .iter()
                    .map(|l| copies[l.fingerprint.as_str()])
                    .collect::<Vec<i32>>(),
            )
            .fetch_all(&self.pool)
            .await?;
            for (id, fp, inserted, settled) in rows {
                new += usize::from(inserted);
                ids.insert(fp, (id, settled));
            }
        }
        Ok((ids, new))
    }

    /// Rows matching `filter`, oldest failure first; only those still in a DLQ unless
    /// `all`.
    pub async fn rows(
        &self,
        filter: &Filter,
        all: bool,
        limit: Option<u64>,
    ) -> Result<Vec<Row>, DlqError> {
        let queues = filter.queues(&self.topology)?;
        let limit = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        Ok(sqlx::query_as(
            "SELECT id, queue, message_id, task, source, kind, error, attempts, failed_at,
                    state, copies, replayed_at, purged_at
               FROM dead_letters
              WHERE queue = ANY($1)
                AND ($2::text IS NULL OR kind = $2)
                AND ($3::text IS NULL OR task = $3)
                AND ($4::timestamptz IS NULL OR failed_at >= $4)
                AND ($5 OR state = 'queued')
              ORDER BY failed_at, id
              LIMIT $6",
        )
        .bind(&queues)
        .bind(&filter.kind)
        .bind(&filter.task)
        .bind(filter.since)
        .bind(all)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Syncs the DLQs `filter` covers (unless `sync` is false), hands every message back
    /// and returns the matching rows.
    pub async fn list(
        &self,
        filter: &Filter,
        all: bool,
        sync: bool,
    ) -> Result<(Vec<Synced>, Vec<Row>), DlqError> {
        let queues = filter.queues(&self.topology)?;
        let mut synced = vec![];
        if sync {
            let s = self.open(&queues).await?;
            synced = s.synced.clone();
            s.close(&HashSet::new()).await;
        }
        Ok((synced, self.rows(filter, all, None).await?))
    }

    /// One row with headers and payload, after syncing its queue (unless `sync` is false).
    pub async fn show(&self, id: i64, sync: bool) -> Result<Detail, DlqError> {
        let detail = || async {
            sqlx::query_as::<_, Detail>(
                "SELECT id, queue, message_id, task, source, kind, error, attempts, failed_at,
                        state, copies, replayed_at, purged_at, headers, payload, payload_json,
                        first_seen_at, last_seen_at, gone_at
                   FROM dead_letters WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(DlqError::NotFound(id))
        };
        let d = detail().await?;
        if !sync || self.topology.queue(&d.row.queue).is_err() {
            return Ok(d);
        }
        self.open(std::slice::from_ref(&d.row.queue))
            .await?
            .close(&HashSet::new())
            .await;
        detail().await
    }

    /// Replays the dead letters `filter` chooses (see the module docs); `progress` is called
    /// after every chunk.
    pub async fn replay(
        &self,
        filter: &Filter,
        opts: &ReplayOptions,
        progress: impl FnMut(Progress),
    ) -> Result<Outcome, DlqError> {
        let producer = if opts.dry_run {
            None
        } else {
            Some(Producer::new(&self.conn, self.topology.jobs_exchange()).await?)
        };
        self.settle(filter, opts, producer.as_ref(), progress).await
    }

    /// Removes the dead letters `filter` chooses from their DLQs (the mirror keeps them as
    /// `purged`).
    pub async fn purge(
        &self,
        filter: &Filter,
        progress: impl FnMut(Progress),
    ) -> Result<Outcome, DlqError> {
        let opts = ReplayOptions::default();
        self.settle(filter, &opts, None, progress).await
    }

    /// Replay (with a producer) or purge (without), or a dry run of either.
    async fn settle(
        &self,
        filter: &Filter,
        opts: &ReplayOptions,
        producer: Option<&Producer>,
        mut progress: impl FnMut(Progress),
    ) -> Result<Outcome, DlqError> {
        let queues = filter.queues(&self.topology)?;
        let session = self.open(&queues).await?;
        let mut acked: HashSet<(usize, usize)> = HashSet::new();
        let result = async {
            let rows = self.rows(filter, false, opts.limit).await?;
            let held = session.row_messages();
            let (reached, missed): (Vec<Row>, Vec<Row>) =
                rows.into_iter().partition(|r| held.contains_key(&r.id));
            let mut out = Outcome {
                not_reached: missed.len(),
                chosen: reached,
                ..Default::default()
            };
            if opts.dry_run {
                return Ok(out);
            }
            let total = out.chosen.len();
            progress(Progress { done: 0, total });
            let mut pace = opts.rate.filter(|r| *r > 0.0).map(|r| {
                let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            });
            for chunk in out.chosen.chunks(CHUNK) {
                let mut ok: Vec<i64> = Vec::with_capacity(chunk.len());
                if let Some(producer) = producer {
                    let mut publishes = Vec::new();
                    for row in chunk {
                        let Some(task) = &row.task else {
                            out.failed
                                .push((row.id, "the message does not say its task".into()));
                            continue;
                        };
                        for &(qi, di) in &held[&row.id] {
                            if let Some(p) = pace.as_mut() {
                                p.tick().await;
                            }
                            let d = &session.held[qi].items[di].1;
                            let jobs = self.topology.jobs_exchange();
                            let props = replay_properties(&d.properties);
                            publishes.push(async move {
                                let r = producer.publish_raw(&jobs, task, task, &d.data, props);
                                (row.id, r.await)
                            });
                        }
                    }
                    let mut failed: HashMap<i64, PublishError> = HashMap::new();
                    for (id, r) in join_all(publishes).await {
                        if let Err(e) = r {
                            failed.entry(id).or_insert(e);
                        }
                    }
                    for row in chunk {
                        match failed.remove(&row.id) {
                            Some(e) if e.is_retryable() => return Err(e.into()),
                            Some(e) => out.failed.push((row.id, e.to_string())),
                            None if row.task.is_some() => ok.push(row.id),
                            None => {}
                        }
                    }
                } else {
                    ok.extend(chunk.iter().map(|r| r.id));
                }
                let (state, column) = if producer.is_some() {
                    ("replayed", "replayed_at")
                } else {
                    ("purged", "purged_at")
                };
                sqlx::query(&format!(
                    "UPDATE dead_letters SET state = '{state}', {column} = now()
                      WHERE id = ANY($1)"
                ))
                .bind(&ok)
                .execute(&self.pool)
                .await?;
                for id in &ok {
                    for &(qi, di) in &held[id] {
                        session.held[qi].items[di]
                            .1
                            .acker
                            .ack(BasicAckOptions::default())
                            .await?;
                        acked.insert((qi, di));
                        out.messages += 1;
                    }
                }
                out.done += ok.len();
                progress(Progress {
                    done: out.done + out.failed.len(),
                    total,
                });
            }
            Ok(out)
        }
        .await;
        session.close(&acked).await;
        result
    }

    /// The namespace's topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_cover_worker_and_broker_reasons_once() {
        let k = known_kinds();
        for want in [
            "permanent",
            "exhausted",
            "delivery-limit",
            "rejected",
            "expired",
        ] {
            assert!(k.iter().any(|x| x == want), "{want} missing from {k:?}");
        }
        let dl = k.iter().filter(|x| *x == "delivery-limit").count();
        assert_eq!(dl, 1);
    }
}

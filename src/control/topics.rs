//! Topics in `/metrics` and `/debug/probes`: totals over every topic, and per topic (the
//! [`TOPIC_REPORT_MAX`](hioload_wsproto::shard::topics::TOPIC_REPORT_MAX) topics with the most
//! subscribers) subscribers, deliveries, and slow subscribers per reason (skipped, closed), so
//! that no message is lost without a count.

use std::fmt::Write;

use hioload_wsproto::TopicsSnapshot;

use super::{json, prometheus};

/// The topic families, from one snapshot.
pub(super) fn topic_metrics(out: &mut String, s: &TopicsSnapshot) {
    prometheus::gauge(
        out,
        "hioload_topics",
        "Topics with subscribers on this node.",
        s.topics as f64,
    );
    prometheus::gauge(
        out,
        "hioload_topic_subscriptions",
        "Subscriptions of this node's sessions, all topics.",
        s.subscriptions as f64,
    );
    prometheus::counter(
        out,
        "hioload_topic_publications_total",
        "Publications delivered to this node's workers (made here or received from the cluster).",
        s.published,
    );
    prometheus::counter(
        out,
        "hioload_topic_publish_drops_total",
        "Publications a worker missed because its inbox was full (each a message its subscribers did not get).",
        s.publish_drops,
    );
    prometheus::counter(
        out,
        "hioload_topic_deliveries_total",
        "Topic messages queued for subscribers, all topics.",
        s.totals.delivered,
    );
    let name = "hioload_topic_slow_total";
    prometheus::header(
        out,
        name,
        "counter",
        "Topic messages a slow subscriber did not get, per policy: skipped (not queued) or closed (the subscriber closed with 1008), all topics.",
    );
    prometheus::sample(out, name, &[("reason", "skipped")], s.totals.skipped as f64);
    prometheus::sample(out, name, &[("reason", "closed")], s.totals.closed as f64);

    type Field = fn(&hioload_wsproto::TopicStat) -> u64;
    let per_topic: [(&str, &str, &str, Field); 3] = [
        (
            "hioload_topic_subscribers",
            "gauge",
            "Subscribers per topic (the topics with the most subscribers).",
            |t| t.subscribers as u64,
        ),
        (
            "hioload_topic_published_total",
            "counter",
            "Publications per topic that reached a worker with subscribers of it (summed over workers).",
            |t| t.counts.published,
        ),
        (
            "hioload_topic_delivered_total",
            "counter",
            "Messages queued for subscribers, per topic.",
            |t| t.counts.delivered,
        ),
    ];
    for (name, kind, help, field) in per_topic {
        prometheus::header(out, name, kind, help);
        for t in &s.top {
            prometheus::sample(out, name, &[("topic", &t.name)], field(t) as f64);
        }
    }
    let name = "hioload_topic_slow_subscriber_total";
    prometheus::header(
        out,
        name,
        "counter",
        "Slow subscribers per topic and policy: messages skipped, subscribers closed with 1008 (counted while the topic has subscribers on a worker; hioload_topic_slow_total keeps every count).",
    );
    for t in &s.top {
        prometheus::sample(
            out,
            name,
            &[("topic", &t.name), ("reason", "skipped")],
            t.counts.skipped as f64,
        );
        prometheus::sample(
            out,
            name,
            &[("topic", &t.name), ("reason", "closed")],
            t.counts.closed as f64,
        );
    }
}

/// `topics`: `{"count":…,"subscriptions":…,"published":…,"publish_drops":…,"delivered":…,
/// "skipped":…,"closed":…,"top":[{"topic":…,"subscribers":…,"delivered":…,"skipped":…,
/// "closed":…},…]}`.
pub(super) fn topics_json(out: &mut String, s: &TopicsSnapshot) {
    let _ = write!(
        out,
        "{{\"count\":{},\"subscriptions\":{},\"published\":{},\"publish_drops\":{},\"delivered\":{},\"skipped\":{},\"closed\":{},\"top\":[",
        s.topics,
        s.subscriptions,
        s.published,
        s.publish_drops,
        s.totals.delivered,
        s.totals.skipped,
        s.totals.closed
    );
    for (i, t) in s.top.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"topic\":");
        json::string(out, &t.name);
        let _ = write!(
            out,
            ",\"subscribers\":{},\"delivered\":{},\"skipped\":{},\"closed\":{}}}",
            t.subscribers, t.counts.delivered, t.counts.skipped, t.counts.closed
        );
    }
    out.push_str("]}");
}

/// The cluster link's families (`hioload_cluster_*`), when one is configured.
pub(super) fn cluster_metrics(out: &mut String, c: &crate::cluster::ClusterStats) {
    use std::sync::atomic::{AtomicU64, Ordering};
    type Field = fn(&crate::cluster::ClusterStats) -> &AtomicU64;
    let rows: [(&str, &str, &str, Field); 9] = [
        (
            "hioload_cluster_sent_total",
            "counter",
            "Publications sent to Redis and acknowledged.",
            |c| &c.sent,
        ),
        (
            "hioload_cluster_received_total",
            "counter",
            "Publications of other nodes received from Redis and delivered to local subscribers.",
            |c| &c.received,
        ),
        (
            "hioload_cluster_own_echoes_total",
            "counter",
            "Publications of this node that Redis sent back (dropped: delivered locally already).",
            |c| &c.own_echoes,
        ),
        (
            "hioload_cluster_malformed_total",
            "counter",
            "Messages from Redis that were not a node's envelope (dropped).",
            |c| &c.malformed,
        ),
        (
            "hioload_cluster_connects_total",
            "counter",
            "Connections made to Redis (publisher and subscriber).",
            |c| &c.connects,
        ),
        (
            "hioload_cluster_failures_total",
            "counter",
            "Failed connection attempts and broken connections to Redis.",
            |c| &c.failures,
        ),
        (
            "hioload_cluster_publisher_up",
            "gauge",
            "1 while the publishing connection to Redis is up.",
            |c| &c.publisher_up,
        ),
        (
            "hioload_cluster_subscriber_up",
            "gauge",
            "1 while the subscribing connection to Redis is up.",
            |c| &c.subscriber_up,
        ),
        (
            "hioload_cluster_channels",
            "gauge",
            "Redis channels this node is subscribed to (one per topic with local subscribers).",
            |c| &c.channels,
        ),
    ];
    for (name, kind, help, field) in rows {
        prometheus::header(out, name, kind, help);
        prometheus::sample(out, name, &[], field(c).load(Ordering::Relaxed) as f64);
    }
    let name = "hioload_cluster_dropped_total";
    prometheus::header(
        out,
        name,
        "counter",
        "Publications of this node not sent to the other nodes, per reason: queue_full (the link's ring), disconnected (Redis unreachable, or the connection broke with them in flight).",
    );
    prometheus::sample(
        out,
        name,
        &[("reason", "queue_full")],
        c.dropped_queue_full.load(Ordering::Relaxed) as f64,
    );
    prometheus::sample(
        out,
        name,
        &[("reason", "disconnected")],
        c.dropped_disconnected.load(Ordering::Relaxed) as f64,
    );
}

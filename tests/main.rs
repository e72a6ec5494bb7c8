//! The one integration test binary. Every test talks to a real PostgreSQL
//! (wal_level=logical) and a real RabbitMQ; see `support` for addresses.

mod support;

// Delivery through logical replication: properties, order, rollbacks, SCRAM, slot position.
mod replication;
// Crashes and graceful stops of the relay binary: SIGKILL, SIGTERM.
mod lifecycle;
// Unroutable messages and confirm correlation under pipelining.
mod unroutable;
// CloudEvents routes (validated by the CloudEvents Python SDK) and W3C trace context.
mod cloudevents;
// Bad rows: a clear stop, never a skip; logical messages routed by prefix.
mod data;
// Broker faults through a proxy: cuts, black holes.
mod broker_faults;
// A list of broker nodes: a dead node skipped, failover on a cut, the node named, check per node.
mod broker_nodes;
// Broker failover on a three-node RabbitMQ cluster: a node stopped, a connection cut, the whole cluster stopped.
mod broker_cluster;
// on_unroutable policies: block, dead_letter, drop.
mod policies;
// PostgreSQL faults: walsender terminated, server restarted.
mod postgres_faults;
// The polling source: order, delete/mark after confirm, advisory lock.
mod polling;
// Restarts of a private PostgreSQL cluster and a private RabbitMQ node.
mod restarts;
// TLS: PostgreSQL sslmodes on both connections, AMQPS.
mod tls;
// Two instances on one slot: one active, one standby that takes over.
mod standby;
// Hostile and odd data, hostile identifiers, md5 and rotated secrets.
mod hostile;
// Metrics against the truth, probes, and logs without secrets.
mod observability;
// deploy/: alert rules and dashboard name only metrics that exist.
mod deploy;
// deploy/kubernetes/: the manifests' config, env, mounts, ports and probe paths against the binary.
mod kubernetes;
// The preflight: one test per problem it must find; --json against deploy/check.schema.json.
mod check;
// The command line: --version, setup, bad configs.
mod cli;
// A lost replication slot: exit 3, readiness, metric, check, recover.
mod slot_loss;
// outbox-relay replay: a range re-published with original ids, --dry-run, --route, --rate, SIGTERM.
mod replay;
// Memory bounded by the window and the byte budget: a large transaction, an unroutable backlog, a large payload.
mod memory;
// A silent database (black hole) is noticed within receive_timeout; a PostgreSQL shutdown is never held up.
mod liveness;
// A partitioned outbox table named by its parent; publish_via_partition_root.
mod partitions;
// The harness's private PostgreSQL clusters and RabbitMQ nodes (support::cluster).
mod support_smoke;

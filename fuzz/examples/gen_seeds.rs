//! Writes the seed corpus for the fuzz targets into `fuzz/seeds/<target>/`,
//! built with the crate's own encoders so the seeds are valid messages the
//! fuzzer can mutate from. The output is checked in; rerun after a format
//! change:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds
//!
//! scripts/fuzz.sh copies the seeds into the (git-ignored) working corpus
//! `fuzz/corpus/<target>/` before each run.

use std::fs;
use std::path::{Path, PathBuf};

use outbox_relay::event::{Column, Datum, EndLsn, Lsn, PgTimestamp};
use outbox_relay::source::replication::pgoutput::{encode, PgOutputMessage, Relation};
use outbox_relay::source::replication::protocol::{copy_data_frame, encode_keepalive, encode_xlog_data};

fn relation(id: u32, namespace: &str, name: &str, cols: &[(&str, u32)]) -> PgOutputMessage {
    PgOutputMessage::Relation(Relation {
        id,
        namespace: namespace.into(),
        name: name.into(),
        columns: cols.iter().map(|(name, type_oid)| Column { name: (*name).into(), type_oid: *type_oid }).collect(),
    })
}

fn begin(final_lsn: u64, xid: u32) -> PgOutputMessage {
    PgOutputMessage::Begin { final_lsn: Lsn(final_lsn), commit_time: PgTimestamp(829_000_000_000_000), xid }
}

fn commit(commit_lsn: u64, end_lsn: u64) -> PgOutputMessage {
    PgOutputMessage::Commit {
        commit_lsn: Lsn(commit_lsn),
        end_lsn: EndLsn(Lsn(end_lsn)),
        commit_time: PgTimestamp(829_000_000_000_001),
    }
}

fn insert(relation_id: u32, values: Vec<Datum>) -> PgOutputMessage {
    PgOutputMessage::Insert { relation_id, values }
}

fn text(s: &str) -> Datum {
    Datum::Text(s.as_bytes().to_vec().into())
}

fn message(transactional: bool, lsn: u64, prefix: &str, content: &str) -> PgOutputMessage {
    PgOutputMessage::Message {
        transactional,
        lsn: Lsn(lsn),
        prefix: prefix.into(),
        content: content.as_bytes().to_vec(),
    }
}

fn outbox_relation() -> PgOutputMessage {
    relation(16_384, "public", "outbox", &[("id", 20), ("topic", 25), ("payload", 3802)])
}

fn outbox_row(id: &str) -> PgOutputMessage {
    insert(16_384, vec![text(id), text("orders.created"), text("{\"order\":7}")])
}

/// One of each message kind the decoder handles.
fn single_messages() -> Vec<(&'static str, PgOutputMessage)> {
    vec![
        ("begin", begin(0x16_B374_D848, 812)),
        ("commit", commit(0x16_B374_D848, 0x16_B374_D878)),
        ("relation", outbox_relation()),
        ("relation_catalog", relation(1259, "", "pg_class", &[("relname", 19)])),
        ("insert", insert(16_384, vec![text("42"), Datum::Null, Datum::UnchangedToast, text("")])),
        ("message_tx", message(true, 0x16_B374_D860, "outbox", "{\"a\":1}")),
        ("message_standalone", message(false, 0x16_B374_D900, "outbox", "hi")),
        ("skipped_update", PgOutputMessage::Skipped { tag: b'U' }),
    ]
}

/// A stream of pgoutput messages as the server sends them for a few
/// transactions (the relation first, then Begin .. Commit).
fn stream() -> Vec<PgOutputMessage> {
    vec![
        outbox_relation(),
        begin(0x100, 700),
        outbox_row("1"),
        outbox_row("2"),
        message(true, 0xF8, "outbox", "{\"m\":1}"),
        PgOutputMessage::Skipped { tag: b'U' },
        commit(0x100, 0x128),
        message(false, 0x140, "outbox", "standalone"),
        begin(0x200, 701),
        commit(0x200, 0x230),
    ]
}

/// The `transaction_assembler` input format: length byte, then the message.
fn chunks(msgs: &[PgOutputMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for msg in msgs {
        let bytes = encode(msg);
        out.push(u8::try_from(bytes.len()).expect("seed message longer than 255 bytes"));
        out.extend_from_slice(&bytes);
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");

    let dir = root.join("pgoutput_decode");
    fs::create_dir_all(&dir).expect("create seed dir");
    for (name, msg) in single_messages() {
        write(&dir, name, &encode(&msg));
    }

    let dir = root.join("replication_frame");
    fs::create_dir_all(&dir).expect("create seed dir");
    let mut wal = 0x100u64;
    let mut replication = Vec::new();
    for msg in stream() {
        let data = encode(&msg);
        replication.extend_from_slice(&copy_data_frame(&encode_xlog_data(
            Lsn(wal),
            Lsn(0x1000),
            829_000_000_000_000,
            &data,
        )));
        wal += 0x10;
    }
    replication.extend_from_slice(&copy_data_frame(&encode_keepalive(Lsn(0x1000), 829_000_000_000_002, true)));
    write(&dir, "stream", &replication);
    write(&dir, "keepalive", &copy_data_frame(&encode_keepalive(Lsn(0x16_B374_D878), 1, false)));
    // CopyDone ('c', empty body), then ReadyForQuery ('Z', "I"), then a frame
    // cut short.
    let mut other = vec![b'c', 0, 0, 0, 4, b'Z', 0, 0, 0, 5, b'I'];
    other.extend_from_slice(&copy_data_frame(&encode_xlog_data(Lsn(1), Lsn(2), 3, &encode(&begin(9, 1))))[..20]);
    write(&dir, "copy_done_ready_partial", &other);

    let dir = root.join("transaction_assembler");
    fs::create_dir_all(&dir).expect("create seed dir");
    write(&dir, "stream", &chunks(&stream()));
    // A schema change between two inserts of one transaction, then a reset
    // (zero-length chunk) and an insert that must now fail.
    let mut replaced = chunks(&[
        outbox_relation(),
        begin(0x300, 702),
        outbox_row("3"),
        relation(16_384, "public", "outbox", &[("id", 20), ("payload", 3802)]),
        insert(16_384, vec![text("4"), Datum::Null]),
        commit(0x300, 0x340),
    ]);
    replaced.push(0);
    replaced.extend(chunks(&[begin(0x400, 703), outbox_row("5"), commit(0x400, 0x440)]));
    write(&dir, "relation_replaced_then_reset", &replaced);

    println!("seeds written under {}", root.display());
}

//! The pgoutput (proto v1) decoder on arbitrary XLogData payloads.
//!
//! Properties:
//! - nothing panics (including the errors' Display);
//! - round trip: whenever `decode(bytes)` succeeds with `msg`,
//!   `decode(&encode(&msg)) == Ok(msg)`;
//! - the decoder consumes the whole payload: re-encoding a decoded message
//!   gives exactly as many bytes (fields the decoder ignores, such as Commit
//!   flags or column typmods, are re-encoded with PostgreSQL's usual values,
//!   so the bytes may differ but not the length), except for skipped
//!   messages, whose bodies are not examined and re-encode as a bare tag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outbox_relay::source::replication::pgoutput::{decode, encode, PgOutputMessage};

fuzz_target!(|data: &[u8]| {
    let msg = match decode(data) {
        Ok(msg) => msg,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    let bytes = encode(&msg);
    match &msg {
        PgOutputMessage::Skipped { tag } => {
            assert_eq!(bytes, [*tag], "skipped message re-encoded as more than its tag");
            assert_eq!(data[0], *tag);
        }
        _ => assert_eq!(
            bytes.len(),
            data.len(),
            "re-encoding {msg:?} changed the length: decoder did not consume exactly the message"
        ),
    }
    assert_eq!(bytes[0], data[0], "re-encoding changed the tag");
    match decode(&bytes) {
        Ok(again) => assert_eq!(again, msg, "decode(encode(msg)) != msg"),
        Err(err) => panic!("decode(encode({msg:?})) failed: {err}"),
    }
});

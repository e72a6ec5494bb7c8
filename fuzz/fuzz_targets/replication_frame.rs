//! Backend framing and CopyData decoding on arbitrary bytes, as they would
//! arrive from the server during START_REPLICATION.
//!
//! The input is treated as a byte stream and split with `parse_frame` until it
//! asks for more bytes or fails, once with a small `max_len` (most frames are
//! rejected as too long) and once with the relay's real limit. Every frame
//! body then goes through `decode_copy_data`, and XLogData payloads through
//! the pgoutput decoder, as the relay does.
//!
//! Properties:
//! - nothing panics (including the errors' Display);
//! - a returned frame never declares more than `max_len` bytes;
//! - bytes are consumed only on success, and then exactly one frame's worth
//!   (tag, length, body) with the body copied verbatim; `Ok(None)` and `Err`
//!   leave the buffer untouched;
//! - a decoded CopyData payload re-encodes to the same bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use outbox_relay::source::replication::pgoutput;
use outbox_relay::source::replication::protocol::{
    decode_copy_data, encode_keepalive, encode_xlog_data, parse_frame, ProtocolError, ReplicationMessage,
};

/// Small enough that most fuzzed lengths are rejected as too long.
const SMALL_MAX_LEN: usize = 64;
/// The relay's own limit (`MAX_FRAME` in connection.rs).
const LARGE_MAX_LEN: usize = 1 << 30;

fuzz_target!(|data: &[u8]| {
    split_frames(data, SMALL_MAX_LEN);
    split_frames(data, LARGE_MAX_LEN);
});

fn split_frames(data: &[u8], max_len: usize) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match parse_frame(&mut buf, max_len) {
            Ok(Some(frame)) => {
                let body_len = frame.body.len();
                // The declared length counts its own 4 bytes.
                assert!(
                    body_len + 4 <= max_len,
                    "frame of declared length {} returned with max_len {max_len}",
                    body_len + 4
                );
                assert_eq!(buf.len() + 5 + body_len, before.len(), "consumed more or less than one frame");
                assert_eq!(frame.tag, before[0]);
                let declared = i32::from_be_bytes([before[1], before[2], before[3], before[4]]);
                assert_eq!(usize::try_from(declared).ok(), Some(body_len + 4));
                assert_eq!(&frame.body[..], &before[5..5 + body_len]);
                assert_eq!(&buf[..], &before[5 + body_len..], "the rest was altered");
                check_copy_data(frame.body);
            }
            Ok(None) => {
                assert_eq!(buf, before, "Ok(None) consumed bytes");
                assert!(
                    before.len() < 5 || {
                        let declared = i32::from_be_bytes([before[1], before[2], before[3], before[4]]);
                        usize::try_from(declared).map_or(false, |d| before.len() < 1 + d)
                    },
                    "Ok(None) although a complete frame was present"
                );
                break;
            }
            Err(err) => {
                assert_eq!(buf, before, "an error consumed bytes");
                assert!(before.len() >= 5, "error before the header was complete");
                if let ProtocolError::FrameTooLong { len, max_len: m, .. } = err {
                    assert!(len > m && m == max_len);
                }
                let _ = err.to_string();
                break;
            }
        }
    }
}

fn check_copy_data(body: Bytes) {
    match decode_copy_data(body.clone()) {
        Ok(ReplicationMessage::XLogData { wal_start, wal_end, server_clock, data }) => {
            assert_eq!(
                encode_xlog_data(wal_start, wal_end, server_clock, &data),
                body,
                "XLogData does not re-encode to its bytes"
            );
            // The relay hands the payload straight to the pgoutput decoder.
            match pgoutput::decode(&data) {
                Ok(msg) => {
                    let _ = format!("{msg:?}");
                }
                Err(err) => {
                    let _ = err.to_string();
                }
            }
        }
        Ok(ReplicationMessage::PrimaryKeepalive { wal_end, server_clock, reply_requested }) => {
            assert_eq!(body.len(), 18, "keepalive of the wrong size accepted");
            assert_eq!(reply_requested, body[17] != 0);
            let mut expected = body.to_vec();
            expected[17] = u8::from(expected[17] != 0);
            assert_eq!(
                &encode_keepalive(wal_end, server_clock, reply_requested)[..],
                &expected[..],
                "keepalive does not re-encode to its bytes"
            );
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
}

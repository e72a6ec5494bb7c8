//! The connection against a scripted broker on an in-memory pipe: the
//! handshake as the broker sees it, a publish cut into body frames at the
//! negotiated frame_max, and the broker's frames (a return with a body in
//! several frames, its ack, blocked, a channel close) coming out as events
//! in order.

use std::time::Duration;

use bytes::BufMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::frame::{self, id, Reader};
use super::{BrokerEvent, Connection, Login};
use crate::event::{Lsn, PgTimestamp};
use crate::route::{OutboxHeaders, OutgoingMessage};

/// One frame of any type, as the broker writes it.
fn raw(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend(channel.to_be_bytes());
    v.extend((payload.len() as u32).to_be_bytes());
    v.extend(payload);
    v.push(frame::FRAME_END);
    v
}

fn method(channel: u16, m: (u16, u16), args: impl FnOnce(&mut bytes::BytesMut)) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    frame::method(&mut b, channel, m, args);
    b.to_vec()
}

/// Reads one frame from the client: (type, channel, payload).
async fn read_frame(s: &mut DuplexStream) -> (u8, u16, Vec<u8>) {
    let mut head = [0u8; 7];
    s.read_exact(&mut head).await.unwrap();
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    s.read_exact(&mut payload).await.unwrap();
    assert_eq!(payload.pop(), Some(frame::FRAME_END));
    (head[0], u16::from_be_bytes([head[1], head[2]]), payload)
}

/// Reads a method frame and checks which one it is; returns its arguments.
async fn expect_method(s: &mut DuplexStream, want: (u16, u16)) -> Vec<u8> {
    let (kind, _, payload) = read_frame(s).await;
    assert_eq!(kind, frame::METHOD);
    let got = (u16::from_be_bytes([payload[0], payload[1]]), u16::from_be_bytes([payload[2], payload[3]]));
    assert_eq!(got, want);
    payload[4..].to_vec()
}

/// The broker's first step: the client's protocol header in, connection.start
/// offering `mechanisms` out.
async fn start(s: &mut DuplexStream, mechanisms: &[u8]) {
    let mut header = [0u8; 8];
    s.read_exact(&mut header).await.unwrap();
    assert_eq!(&header, frame::PROTOCOL_HEADER);
    s.write_all(&method(0, id::CONNECTION_START, |b| {
        b.put_u8(0);
        b.put_u8(9);
        b.put_u32(0); // no server properties
        frame::long(b, mechanisms);
        frame::long(b, b"en_US");
    }))
    .await
    .unwrap();
}

/// The broker's side of the handshake, with `frame_max`.
async fn handshake(s: &mut DuplexStream, frame_max: u32) {
    start(s, b"AMQPLAIN PLAIN").await;
    let start_ok = expect_method(s, id::CONNECTION_START_OK).await;
    let mut r = Reader::new(&start_ok);
    r.long().unwrap(); // client properties
    assert_eq!(r.short().unwrap(), "PLAIN");
    assert_eq!(r.long().unwrap(), b"\0relay\0secret");
    s.write_all(&method(0, id::CONNECTION_TUNE, |b| {
        b.put_u16(2047);
        b.put_u32(frame_max);
        b.put_u16(60);
    }))
    .await
    .unwrap();
    let tune_ok = expect_method(s, id::CONNECTION_TUNE_OK).await;
    let mut r = Reader::new(&tune_ok);
    assert_eq!((r.u16().unwrap(), r.u32().unwrap(), r.u16().unwrap()), (2047, frame_max, 30), "heartbeat: the lower");
    let open = expect_method(s, id::CONNECTION_OPEN).await;
    assert_eq!(Reader::new(&open).short().unwrap(), "/v");
    s.write_all(&method(0, id::CONNECTION_OPEN_OK, |b| frame::short(b, ""))).await.unwrap();
    expect_method(s, id::CHANNEL_OPEN).await;
    s.write_all(&method(1, id::CHANNEL_OPEN_OK, |b| frame::long(b, b""))).await.unwrap();
    expect_method(s, id::CONFIRM_SELECT).await;
    s.write_all(&method(1, id::CONFIRM_SELECT_OK, |_| ())).await.unwrap();
}

fn login() -> Login<'static> {
    Login { user: "relay", password: "secret", vhost: "/v", external: false, name: "test", heartbeat: 30 }
}

fn message(body_len: usize) -> OutgoingMessage {
    OutgoingMessage {
        route: 0,
        exchange: "ex".into(),
        routing_key: "a.b".into(),
        message_id: "id-1".into(),
        message_type: None,
        content_type: "application/json".into(),
        timestamp: 1,
        headers: vec![],
        outbox: OutboxHeaders {
            all: true,
            table: "public.outbox".into(),
            lsn: Some(Lsn(16)),
            replay: false,
            commit_time: PgTimestamp(0),
        },
        body: (0..body_len).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into(),
        trace_id: None,
    }
}

/// Reads until `n` events have arrived (bounded).
async fn events(c: &mut Connection, n: usize) -> Vec<BrokerEvent> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while out.len() < n {
            while let Some(e) = c.next_event() {
                out.push(e);
            }
            if out.len() < n {
                c.io().await.unwrap();
            }
        }
    })
    .await
    .expect("events within 5 s");
    out
}

#[tokio::test]
async fn a_publish_and_the_brokers_answers_in_order() {
    let (client, mut broker) = tokio::io::duplex(1 << 20);
    let login = login();
    let (conn, ()) =
        tokio::join!(Connection::open(Box::new(client), None, &login, "test:5672"), handshake(&mut broker, 4096));
    let mut c = conn.unwrap();
    assert_eq!(c.heartbeat(), Duration::from_secs(30));

    // a 10,000-byte body goes out as a method, a header and three body frames of at most 4,096 bytes
    let msg = message(10_000);
    assert_eq!(c.publish(&msg).unwrap(), 1);
    let write = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_millis(200), c.io()).await;
        c
    });
    expect_method(&mut broker, id::BASIC_PUBLISH).await;
    let (kind, _, header) = read_frame(&mut broker).await;
    assert_eq!(kind, frame::HEADER);
    assert_eq!(frame::header_message_id(&header).unwrap().as_deref(), Some("id-1"));
    let mut body = Vec::new();
    while body.len() < 10_000 {
        let (kind, ch, part) = read_frame(&mut broker).await;
        assert_eq!((kind, ch), (frame::BODY, 1));
        assert!(part.len() + frame::FRAME_OVERHEAD <= 4096, "{} bytes", part.len());
        body.extend(part);
    }
    assert_eq!(body, msg.body);
    let mut c = write.await.unwrap();

    // the broker returns it (body in three frames), then acks it, then blocks the connection
    let mut script = method(1, id::BASIC_RETURN, |b| {
        b.put_u16(312);
        frame::short(b, "NO_ROUTE");
        frame::short(b, "ex");
        frame::short(b, "a.b");
    });
    script.extend(raw(frame::HEADER, 1, &header));
    for part in msg.body.chunks(4_000) {
        script.extend(raw(frame::BODY, 1, part));
    }
    script.extend(method(1, id::BASIC_ACK, |b| {
        b.put_u64(1);
        b.put_u8(0);
    }));
    script.extend(method(0, id::CONNECTION_BLOCKED, |b| frame::short(b, "low on memory")));
    broker.write_all(&script).await.unwrap();
    assert_eq!(
        events(&mut c, 3).await,
        [
            BrokerEvent::Return { message_id: Some("id-1".into()), reply_code: 312, reply_text: "NO_ROUTE".into() },
            BrokerEvent::Ack { tag: 1, multiple: false },
            BrokerEvent::Blocked("low on memory".into()),
        ]
    );

    // a channel close is an event, answered with close-ok
    broker
        .write_all(&method(1, id::CHANNEL_CLOSE, |b| {
            b.put_u16(404);
            frame::short(b, "NOT_FOUND - no exchange 'ex'");
            b.put_u32(0);
        }))
        .await
        .unwrap();
    assert_eq!(
        events(&mut c, 1).await,
        [BrokerEvent::ChannelClosed { code: 404, text: "NOT_FOUND - no exchange 'ex'".into() }]
    );
    assert!(!c.is_open());
    let flush = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_millis(200), c.io()).await;
    });
    expect_method(&mut broker, id::CHANNEL_CLOSE_OK).await;
    flush.await.unwrap();
}

#[tokio::test]
async fn a_refused_login_names_the_brokers_reply_and_no_password() {
    let (client, mut broker) = tokio::io::duplex(1 << 16);
    let script = async {
        start(&mut broker, b"PLAIN").await;
        expect_method(&mut broker, id::CONNECTION_START_OK).await;
        broker
            .write_all(&method(0, id::CONNECTION_CLOSE, |b| {
                b.put_u16(403);
                frame::short(b, "ACCESS_REFUSED - Login was refused");
                b.put_u32(0);
            }))
            .await
            .unwrap();
    };
    let login = login();
    let (conn, ()) = tokio::join!(Connection::open(Box::new(client), None, &login, "test:5672"), script);
    let e = conn.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("403 ACCESS_REFUSED") && text.contains("test:5672"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    assert!(!format!("{login:?}").contains("secret"), "Login's Debug shows no password");
}

#[tokio::test]
async fn heartbeats_go_out_when_quiet_and_a_silent_broker_is_dead() {
    let (client, mut broker) = tokio::io::duplex(1 << 16);
    let login = login();
    let (conn, ()) =
        tokio::join!(Connection::open(Box::new(client), None, &login, "test:5672"), handshake(&mut broker, 4096));
    let mut c = conn.unwrap();
    let t0 = c.last_read;
    c.tick(t0 + Duration::from_secs(16)).unwrap();
    assert!(!c.wbuf.is_empty(), "a heartbeat after half the interval without a write");
    assert_eq!(&c.wbuf[..], &raw(frame::HEARTBEAT, 0, &[])[..]);
    let e = c.tick(t0 + Duration::from_secs(61)).unwrap_err();
    assert!(e.to_string().contains("two heartbeat intervals"), "{e}");
}

#[tokio::test]
async fn the_write_buffer_of_a_big_message_is_given_back() {
    let (client, mut broker) = tokio::io::duplex(8 << 20);
    let login = login();
    let (conn, ()) =
        tokio::join!(Connection::open(Box::new(client), None, &login, "test:5672"), handshake(&mut broker, 131_072));
    let mut c = conn.unwrap();
    c.publish(&message(3 << 20)).unwrap();
    assert!(c.wbuf.capacity() > super::KEEP_WRITE_BUFFER && c.wbuf_grown);
    // the broker reads the message and acks it; the read that brings the ack ends io()
    let ack = method(1, id::BASIC_ACK, |b| {
        b.put_u64(1);
        b.put_u8(0);
    });
    let broker_side = async {
        expect_method(&mut broker, id::BASIC_PUBLISH).await;
        let mut got = 0;
        let (_, _, _header) = read_frame(&mut broker).await;
        while got < 3 << 20 {
            got += read_frame(&mut broker).await.2.len();
        }
        broker.write_all(&ack).await.unwrap();
    };
    let (events, ()) = tokio::join!(events(&mut c, 1), broker_side);
    assert_eq!(events, [BrokerEvent::Ack { tag: 1, multiple: false }]);
    assert!(!c.wbuf_grown, "the big buffer was replaced");
    assert!(c.wbuf.is_empty() && c.wbuf.capacity() <= super::KEEP_WRITE_BUFFER, "{}", c.wbuf.capacity());
}

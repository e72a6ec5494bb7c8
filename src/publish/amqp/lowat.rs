//! Confirms read in batches: `SO_RCVLOWAT` on the broker socket.
//!
//! At a steady trickle of events each publish is answered by its own
//! basic.ack a fraction of a millisecond later, and each ack would wake the
//! relay's thread (a context switch, the largest cost per event at 1,000
//! events/s). Nothing needs an ack at once while the window is nearly empty:
//! reading it 20 ms later only delays the position by as much. So while the
//! publisher says it can wait, the socket's receive low-water mark is raised
//! and the kernel wakes nobody for a few acks; when the publisher wants them
//! (its short timer, a filling window, a stop) the mark goes back to one
//! byte, and Linux signals readability at once if bytes are waiting
//! (`tcp_set_rcvlowat` calls `tcp_data_ready`). A closed or reset
//! connection wakes the reader whatever the mark.
//!
//! It is only an optimisation: where the option cannot be set, every ack
//! wakes the relay as before.

use std::os::fd::RawFd;

/// The mark while acks can wait: some hundreds of ack frames (21 bytes
/// each), small enough not to grow the receive buffer.
const LAZY: libc::c_int = 8 * 1024;

/// The receive low-water mark of one TCP socket.
#[derive(Debug)]
pub struct LowWater {
    fd: RawFd,
    lazy: bool,
    /// Set once the option failed: stop trying.
    broken: bool,
}

impl LowWater {
    /// For the socket `fd`, owned by the connection that owns this.
    pub fn new(fd: RawFd) -> Self {
        LowWater { fd, lazy: false, broken: false }
    }

    /// Raises the mark (`lazy`) or lowers it to one byte; a system call
    /// only when it changes.
    pub fn set(&mut self, lazy: bool) {
        if lazy == self.lazy || self.broken {
            return;
        }
        match set_rcvlowat(self.fd, if lazy { LAZY } else { 1 }) {
            Ok(()) => self.lazy = lazy,
            Err(e) => {
                tracing::debug!(error = %e, "SO_RCVLOWAT unavailable on the broker socket; every confirm wakes the relay");
                self.broken = true;
            }
        }
    }
}

#[allow(unsafe_code)]
fn set_rcvlowat(fd: RawFd, bytes: libc::c_int) -> std::io::Result<()> {
    // SAFETY: `fd` is the broker socket, open for as long as the connection
    // that owns the `LowWater` (both are fields of `amqp::Connection`); the
    // option value is a c_int on the stack, passed with its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::LowWater;

    /// What the publisher relies on: with the mark raised a few bytes do not
    /// make the socket readable; lowering it makes them readable at once.
    #[tokio::test]
    async fn a_raised_mark_holds_a_few_bytes_back_until_it_is_lowered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
        let (client, (mut broker, _)) = (client.unwrap(), accepted.unwrap());
        let mut mark = LowWater::new(client.as_raw_fd());
        mark.set(true);
        broker.write_all(&[0xCE; 21]).await.unwrap(); // one ack frame's worth
        assert!(
            tokio::time::timeout(Duration::from_millis(300), client.readable()).await.is_err(),
            "21 bytes under a raised mark must not wake the reader"
        );
        mark.set(false);
        tokio::time::timeout(Duration::from_secs(5), client.readable())
            .await
            .expect("readable once the mark is lowered")
            .unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(client.try_read(&mut buf).unwrap(), 21);
        assert!(!mark.broken);
    }
}

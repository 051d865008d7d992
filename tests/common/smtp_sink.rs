//! A real SMTP server on loopback for the tests: it accepts every message
//! over TCP and keeps it, so tests can read links and codes out of the mail.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Mail {
    pub to: Vec<String>,
    /// Headers and body, with quoted-printable soft breaks and escapes undone.
    pub data: String,
}

impl Mail {
    pub fn subject(&self) -> String {
        self.data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// The first link to `/verify` in the message.
    pub fn link(&self) -> String {
        let verify = self
            .data
            .find("/verify?")
            .expect("a /verify link in the mail");
        let start = self.data[..verify]
            .rfind("http")
            .expect("a link in the mail");
        let rest = &self.data[start..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '<' || c == '"')
            .unwrap_or(rest.len());
        rest[..end].replace("&amp;", "&")
    }

    /// The one-time code (the digits after "code: ").
    pub fn code(&self) -> String {
        let i = self.data.find("code: ").expect("a code in the mail") + 6;
        self.data[i..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect()
    }
}

fn decode_qp(s: &str) -> String {
    let s = s.replace("=\r\n", "");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone)]
pub struct SmtpSink {
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
    /// While set, the server answers every MAIL FROM with a temporary failure.
    refusing: Arc<Mutex<bool>>,
    /// Recipients refused for good (550).
    rejected: Arc<Mutex<Vec<String>>>,
    /// While set, the server reads a message and never answers it.
    stalling: Arc<Mutex<bool>>,
    /// Messages read and left unanswered.
    stalled: Arc<Mutex<usize>>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        Self::start_on(0).await
    }

    /// On a chosen loopback port (0: any), so another process can be pointed at it.
    pub async fn start_on(port: u16) -> SmtpSink {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sink = SmtpSink {
            port,
            mails: Default::default(),
            refusing: Default::default(),
            rejected: Default::default(),
            stalling: Default::default(),
            stalled: Default::default(),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    let _ = w.write_all(b"220 sink ESMTP\r\n").await;
                    let mut to = Vec::new();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let upper = line.to_ascii_uppercase();
                        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO")
                        {
                            b"250 sink\r\n"
                        } else if upper.starts_with("MAIL FROM") {
                            if *s.refusing.lock().unwrap() {
                                b"451 try again later\r\n"
                            } else {
                                b"250 ok\r\n"
                            }
                        } else if upper.starts_with("RCPT TO") {
                            let addr = line[8..]
                                .trim()
                                .trim_start_matches(':')
                                .trim()
                                .trim_matches(|c| c == '<' || c == '>')
                                .to_string();
                            if s.rejected.lock().unwrap().contains(&addr) {
                                b"550 no such mailbox\r\n"
                            } else {
                                to.push(addr);
                                b"250 ok\r\n"
                            }
                        } else if upper == "DATA" {
                            let _ = w.write_all(b"354 go ahead\r\n").await;
                            let mut data = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                data.push_str(l.strip_prefix('.').unwrap_or(&l));
                                data.push_str("\r\n");
                            }
                            if *s.stalling.lock().unwrap() {
                                *s.stalled.lock().unwrap() += 1;
                                // Hold the connection open, answering nothing.
                                while lines.next_line().await.is_ok_and(|l| l.is_some()) {}
                                break;
                            }
                            s.mails.lock().unwrap().push(Mail {
                                to: std::mem::take(&mut to),
                                data: decode_qp(&data),
                            });
                            b"250 queued\r\n"
                        } else if upper == "QUIT" {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            break;
                        } else {
                            b"250 ok\r\n"
                        };
                        if w.write_all(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        sink
    }

    /// Refuses mail to `addr` permanently.
    pub fn reject(&self, addr: &str) {
        self.rejected.lock().unwrap().push(addr.to_string());
    }

    pub fn refuse(&self, on: bool) {
        *self.refusing.lock().unwrap() = on;
    }

    /// While on, a message is read and never answered (a hung server).
    pub fn stall(&self, on: bool) {
        *self.stalling.lock().unwrap() = on;
    }

    /// How many messages were read and left unanswered.
    pub fn stalled(&self) -> usize {
        *self.stalled.lock().unwrap()
    }

    pub fn all(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    pub fn count_to(&self, addr: &str) -> usize {
        self.all()
            .iter()
            .filter(|m| m.to.iter().any(|t| t == addr))
            .count()
    }

    /// Waits for the `n`-th mail (1-based) to `addr`.
    pub async fn wait_for(&self, addr: &str, n: usize) -> Mail {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mails: Vec<Mail> = self
                .all()
                .into_iter()
                .filter(|m| m.to.iter().any(|t| t == addr))
                .collect();
            if mails.len() >= n {
                return mails[n - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no mail #{n} to {addr} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

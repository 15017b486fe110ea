//! A fake HTTP server on a loopback port that misbehaves as the test says, counts the
//! requests it gets and keeps what they held.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the server does with each request.
#[derive(Clone)]
pub enum Behaviour {
    /// Answers with these `(status, body)` in turn; the last one repeats.
    Respond(Vec<(u16, String)>),
    /// Reads the request and never answers (the connection stays open).
    Hang,
    /// Reads the request and closes the connection without a word.
    Close,
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// e.g. `POST`.
    pub method: String,
    /// e.g. `/api/v1/query`.
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body, as text.
    pub body: String,
}

/// The running fake; stops accepting when dropped.
pub struct FakeServer {
    /// e.g. `http://127.0.0.1:41234`.
    pub url: String,
    requests: Arc<AtomicUsize>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Starts a fake with `behaviour` on a free loopback port.
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let requests = Arc::new(AtomicUsize::new(0));
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let requests = requests.clone();
            let recorded = recorded.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let requests = requests.clone();
                    let recorded = recorded.clone();
                    let behaviour = behaviour.clone();
                    tokio::spawn(async move {
                        serve(stream, behaviour, requests, recorded).await;
                    });
                }
            }
        });
        FakeServer {
            url,
            requests,
            recorded,
            task,
        }
    }

    /// How many complete requests arrived so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The requests received so far, oldest first.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("lock").clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    behaviour: Behaviour,
    requests: Arc<AtomicUsize>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let index = requests.fetch_add(1, Ordering::SeqCst);
    recorded.lock().expect("lock").push(request);
    match behaviour {
        Behaviour::Respond(answers) => {
            let (status, body) = answers
                .get(index)
                .or(answers.last())
                .cloned()
                .expect("at least one answer");
            let response = format!(
                "HTTP/1.1 {status} Fake\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Behaviour::Hang => {
            // Keep the connection open and silent until the client gives up.
            let mut buf = [0u8; 1];
            let _ = stream.read(&mut buf).await;
        }
        Behaviour::Close => drop(stream),
    }
}

/// Reads one HTTP/1.1 request (headers and a `Content-Length` body).
async fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let header_end = loop {
        if let Some(end) = find(&data, b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = data[header_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some(Recorded {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

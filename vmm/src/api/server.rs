//! The API server: listens on a Unix socket and hands each request to the
//! VMM thread over a channel, waking that thread's event loop with an eventfd.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{debug, error, info, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::{self, Context};
use super::fault_body;
use super::routes::ApiRequest;

/// One request for the VMM thread, with the channel its answer goes back on.
#[derive(Debug)]
pub struct ApiCall {
    /// What the client asked for.
    pub request: ApiRequest,
    /// Where the answer goes; the server waits on the other end.
    pub reply: Sender<ApiResponse>,
}

impl ApiCall {
    /// Sends the answer back; a client that has gone away is not an error.
    pub fn respond(self, response: ApiResponse) {
        if self.reply.send(response).is_err() {
            debug!("API client went away before its answer was ready");
        }
    }
}

/// The VMM's answer to one [`ApiCall`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The JSON body, if any.
    pub body: Option<serde_json::Value>,
}

impl ApiResponse {
    /// `204 No Content`: the operation succeeded.
    pub fn no_content() -> Self {
        ApiResponse {
            status: 204,
            body: None,
        }
    }

    /// `200 OK` with `value` as body.
    pub fn ok(value: serde_json::Value) -> Self {
        ApiResponse {
            status: 200,
            body: Some(value),
        }
    }

    /// A failure: `{"fault_message": message}` with `status`.
    pub fn error(status: u16, message: impl AsRef<str>) -> Self {
        ApiResponse {
            status,
            body: Some(fault_body(message.as_ref())),
        }
    }
}

/// Limits that keep slow or stuck clients from tying up the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    /// How long the VMM thread may take to answer one request.
    pub reply_timeout: Duration,
    /// How long a client may take to send one request once it has begun.
    pub request_timeout: Duration,
    /// How long a kept-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// How many connections are served at once; more are answered with 503.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            reply_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 16,
        }
    }
}

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A live server already answers on the path.
    #[error(
        "another process is serving on the API socket {}: stop it or choose another \
         --api-sock path", path.display()
    )]
    InUse { path: PathBuf },
    /// Something other than a socket sits at the path.
    #[error("{} exists and is not a socket: remove it or choose another --api-sock path",
        path.display())]
    NotASocket { path: PathBuf },
    /// A stale socket file could not be removed.
    #[error("cannot remove the stale API socket {}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Binding or preparing the socket failed.
    #[error("cannot listen on the API socket {}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The stop eventfd could not be created.
    #[error("cannot create the API server's stop event")]
    StopEvent(#[source] io::Error),
    /// The accept thread could not be started.
    #[error("cannot start the API server thread")]
    Spawn(#[source] io::Error),
}

/// A running API server; dropping it stops the server and removes the socket.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    socket_id: (u64, u64),
    stop: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Serves the API on `path` with [`ServerOptions::default`].
    ///
    /// Each request becomes an [`ApiCall`] sent on `handler`, followed by a
    /// write to `wake`, which the VMM's event loop watches.
    pub fn start(
        path: &Path,
        handler: Sender<ApiCall>,
        wake: EventFd,
    ) -> Result<Self, ServerError> {
        Self::start_with_options(path, handler, wake, ServerOptions::default())
    }

    /// Serves the API on `path` with explicit limits.
    pub fn start_with_options(
        path: &Path,
        handler: Sender<ApiCall>,
        wake: EventFd,
        options: ServerOptions,
    ) -> Result<Self, ServerError> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ServerError::StopEvent)?);
        let (listener, socket_id) = bind(path)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let ctx = Context {
            handler,
            wake: Arc::new(wake),
            options,
            stopping: Arc::clone(&stopping),
            active: Arc::new(AtomicUsize::new(0)),
        };
        let thread = spawn_accept_loop(listener, Arc::clone(&stop), ctx).map_err(|err| {
            let _ = fs::remove_file(path);
            ServerError::Spawn(err)
        })?;
        info!("API server listening on {}", path.display());
        Ok(ApiServer {
            path: path.to_path_buf(),
            socket_id,
            stop,
            stopping,
            thread: Some(thread),
        })
    }

    /// The socket path the server listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting connections and removes the socket file.
    ///
    /// Connections already open finish the request in progress and close.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(err) = self.stop.write(1) {
            error!("cannot signal the API server thread to stop: {err}");
        } else if thread.join().is_err() {
            error!("the API server thread panicked");
        }
        self.remove_socket_file();
        info!("API server on {} stopped", self.path.display());
    }

    /// Removes the socket file if it is still the one this server created.
    fn remove_socket_file(&self) {
        let ours =
            fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.socket_id);
        if ours {
            if let Err(err) = fs::remove_file(&self.path) {
                warn!(
                    "cannot remove the API socket {}: {err}",
                    self.path.display()
                );
            }
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Binds `path`, replacing a stale socket file but never a live one.
///
/// Returns the listener and the (device, inode) of the new socket file.
fn bind(path: &Path) -> Result<(UnixListener, (u64, u64)), ServerError> {
    clear_stale_socket(path)?;
    let listen_err = |source| ServerError::Listen {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    match prepare(&listener, path) {
        Ok(socket_id) => Ok((listener, socket_id)),
        Err(source) => {
            let _ = fs::remove_file(path);
            Err(listen_err(source))
        }
    }
}

fn prepare(listener: &UnixListener, path: &Path) -> io::Result<(u64, u64)> {
    // The API can load any snapshot the process can read: keep it to its owner.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let meta = fs::symlink_metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

fn clear_stale_socket(path: &Path) -> Result<(), ServerError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Listen {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ServerError::InUse {
            path: path.to_path_buf(),
        });
    }
    info!("removing the stale API socket {}", path.display());
    fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
        path: path.to_path_buf(),
        source,
    })
}

fn spawn_accept_loop(
    listener: UnixListener,
    stop: Arc<EventFd>,
    ctx: Context,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("hiber-api".to_string())
        .spawn(move || accept_loop(&listener, &stop, &ctx))
}

/// Accepts connections until `stop` is signalled.
fn accept_loop(listener: &UnixListener, stop: &EventFd, ctx: &Context) {
    loop {
        match wait_readable(listener.as_raw_fd(), stop.as_raw_fd()) {
            Ok(Readable::Stop) => return,
            Ok(Readable::Listener) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return error!("the API server stops: cannot wait for clients: {err}"),
        }
        match listener.accept() {
            Ok((stream, _)) => start_connection(stream, ctx),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => {
                warn!("cannot accept an API connection: {err}");
                // Out of descriptors or memory: give the process a moment.
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

enum Readable {
    Listener,
    Stop,
}

/// Blocks until the listener or the stop event can be read.
fn wait_readable(listener: i32, stop: i32) -> io::Result<Readable> {
    let mut fds = [listener, stop].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `fds` is a live array of two initialised pollfd structures and
    // the length passed matches it; poll only writes their `revents` fields.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    if fds[1].revents != 0 {
        return Ok(Readable::Stop);
    }
    Ok(Readable::Listener)
}

/// Serves one connection on its own thread, or turns it away when full.
fn start_connection(stream: UnixStream, ctx: &Context) {
    let max = ctx.options.max_connections;
    if ctx.active.fetch_add(1, Ordering::SeqCst) >= max {
        ctx.active.fetch_sub(1, Ordering::SeqCst);
        warn!("API connection refused: {max} connections are already open");
        let message = format!("the API already serves {max} connections: retry later");
        return connection::turn_away(stream, &message);
    }
    let guard = ActiveGuard(Arc::clone(&ctx.active));
    let ctx = ctx.clone();
    let spawned = thread::Builder::new()
        .name("hiber-api-conn".to_string())
        .spawn(move || {
            let _guard = guard;
            if let Err(err) = stream.set_nonblocking(false) {
                return warn!("cannot make an API connection blocking: {err}");
            }
            connection::serve(stream, &ctx);
        });
    if let Err(err) = spawned {
        warn!("cannot start a thread for an API connection: {err}");
    }
}

/// Counts an open connection until dropped.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

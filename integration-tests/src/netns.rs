//! A network namespace of a test's own, with TAP devices in it, for the
//! guest's network tests: nothing of the host's network is touched, and
//! dropping the [`NetNs`] removes the namespace and every TAP in it.
//!
//! `hiber` must run inside the namespace to open a TAP there: start it
//! from [`NetNs::within`] (a child process inherits the namespace of the
//! thread that starts it). The host end of a TCP transfer runs on a thread
//! of [`NetNs::spawn`]. Needs root and `ip` (iproute2); fails without them.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

/// A TAP device inside a [`NetNs`], up, with its host end addressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostTap {
    /// The interface name.
    pub name: String,
    /// The host's address on it: `172.30.<subnet>.1`.
    pub host_ip: Ipv4Addr,
    /// The address the guest is meant to take: `172.30.<subnet>.2`.
    pub guest_ip: Ipv4Addr,
    /// The prefix length of both (24).
    pub prefix: u8,
    /// The TAP's own MAC address, fixed by the subnet, so that TAPs of
    /// the same subnet in two namespaces look like one host to a guest.
    pub mac: String,
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace with a unique name, its loopback up.
    pub fn new() -> NetNs {
        let n = NEXT_NS.fetch_add(1, Ordering::SeqCst);
        let name = format!("hiber-{}-{n}", std::process::id());
        run_ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds the TAP `name`, its host end `172.30.<subnet>.1/24`, up.
    pub fn add_tap(&self, name: &str, subnet: u8) -> HostTap {
        let tap = HostTap {
            name: name.to_string(),
            host_ip: Ipv4Addr::new(172, 30, subnet, 1),
            guest_ip: Ipv4Addr::new(172, 30, subnet, 2),
            prefix: 24,
            mac: format!("02:00:ac:1e:{subnet:02x}:01"),
        };
        self.ip(&["tuntap", "add", name, "mode", "tap"]);
        self.ip(&["link", "set", name, "address", &tap.mac]);
        let addr = format!("{}/{}", tap.host_ip, tap.prefix);
        self.ip(&["addr", "add", &addr, "dev", name]);
        self.ip(&["link", "set", name, "up"]);
        tap
    }

    /// Runs `ip -n NAME ARGS`, failing the test if it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all);
    }

    /// Runs `program ARGS` inside the namespace (`ip netns exec`) and
    /// returns what it printed, whatever its status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .expect("`ip` (iproute2) is installed")
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn spawn<T, F>(&self, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let ns = self.open();
        std::thread::spawn(move || {
            enter(&ns);
            f()
        })
    }

    /// Runs `f` inside the namespace and returns its value: processes it
    /// starts (such as `hiber`) live in the namespace.
    pub fn within<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.spawn(f).join().expect("the code run in the namespace")
    }

    fn open(&self) -> File {
        let path = format!("/run/netns/{}", self.name);
        File::open(&path).unwrap_or_else(|e| panic!("{path} cannot be opened: {e}"))
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("ip netns del {}: {e}", self.name),
        }
    }
}

/// Moves the calling thread into the namespace behind `ns`.
fn enter(ns: &File) {
    // SAFETY: setns takes a descriptor we own, open for the call, and no
    // pointer; it changes only the calling thread's network namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns(CLONE_NEWNET) failed: {} (the network tests need root)",
        std::io::Error::last_os_error()
    );
}

fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("`ip` (iproute2) is installed; the network tests need it");
    assert!(
        out.status.success(),
        "ip {}: {} (the network tests need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// Proves a namespace gets its TAP and address, that code run inside
    /// it sees them, and that the namespace is gone after the drop.
    #[test]
    fn a_namespace_holds_its_tap_and_goes_away_on_drop() {
        let ns = NetNs::new();
        let tap = ns.add_tap("hbtest0", 7);
        let out = ns.exec("ip", &["-o", "addr", "show", "dev", "hbtest0"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains("172.30.7.1/24"), "{text}");

        // A TCP round trip over loopback inside the namespace, bound to the
        // TAP's address, which only exists there.
        let addr = (tap.host_ip, 0);
        let echoed = ns.within(move || {
            let listener = TcpListener::bind(addr).unwrap();
            let port = listener.local_addr().unwrap().port();
            let client = std::thread::spawn(move || {
                let mut s = TcpStream::connect((addr.0, port)).unwrap();
                s.write_all(b"ping").unwrap();
            });
            let mut got = Vec::new();
            listener.accept().unwrap().0.read_to_end(&mut got).unwrap();
            client.join().unwrap();
            got
        });
        assert_eq!(echoed, b"ping");
        assert!(
            TcpListener::bind((tap.host_ip, 0)).is_err(),
            "the address is not in the test's own namespace"
        );

        let name = ns.name().to_string();
        drop(ns);
        assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
    }
}

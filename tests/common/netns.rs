//! A network namespace joined to this one by veth links (needs root and `ip`), so that a test
//! can run a server in it and cut one of its links while the others stay up. Deleted, links and
//! all, when dropped.
//!
//! Where namespaces cannot be made the tests that need one are skipped with a message, unless
//! `STEAD_REQUIRE_NETNS=1` (as `.ci/run` sets where it can make one) makes that a failure.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// One veth link: `host` in this namespace, its peer in the test's namespace.
pub struct Link {
    /// The interface's name in this namespace (the one a test takes down).
    pub host: String,
    pub host_ip: Ipv4Addr,
    pub inside_ip: Ipv4Addr,
}

/// A namespace made for one test.
pub struct Namespace {
    name: String,
    links: Vec<String>,
    /// Distinguishes this process's names and subnets from another's.
    tag: u32,
}

/// Runs `ip` with `args`; the error names the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("ip {}: {error}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Namespace {
    /// A fresh namespace with its loopback up, or None (after saying why) when the test should
    /// be skipped.
    pub fn create(test: &str) -> Option<Namespace> {
        let tag = std::process::id() % 100_000;
        let name = format!("stead-test-{tag}");
        // A namespace left by a killed run of the same pid would be in the way.
        let _ = ip(&["netns", "delete", &name]);
        let made = ip(&["netns", "add", &name])
            .and_then(|()| ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]));
        match made {
            Ok(()) => Some(Namespace {
                name,
                links: Vec::new(),
                tag,
            }),
            Err(error) => {
                let _ = ip(&["netns", "delete", &name]);
                let required =
                    std::env::var_os("STEAD_REQUIRE_NETNS").is_some_and(|value| value == "1");
                assert!(
                    !required,
                    "{test}: STEAD_REQUIRE_NETNS=1 but no namespace: {error}"
                );
                eprintln!("{test}: SKIPPED: cannot make a network namespace: {error}");
                None
            }
        }
    }

    /// Adds veth link number `index` (0..4) with a /30 of its own, both ends up.
    pub fn link(&mut self, index: u32) -> Link {
        assert!(index < 4, "four links at most");
        let host = format!("st{}h{index}", self.tag);
        let inside = format!("st{}n{index}", self.tag);
        let _ = ip(&["link", "delete", &host]);
        // 10.(64..127).x.y/30: two bits of `index` and the tag pick the subnet.
        let subnet = (self.tag % (64 * 256 * 16)) * 4 + index;
        let base = u32::from(Ipv4Addr::new(10, 64, 0, 0)) + subnet * 4;
        let (host_ip, inside_ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let steps: [Vec<String>; 6] = [
            vec![
                "link".into(),
                "add".into(),
                host.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                inside.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                inside.clone(),
                "netns".into(),
                self.name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{host_ip}/30"),
                "dev".into(),
                host.clone(),
            ],
            vec!["link".into(), "set".into(), host.clone(), "up".into()],
            self.inside(&["addr", "add", &format!("{inside_ip}/30"), "dev", &inside]),
            self.inside(&["link", "set", &inside, "up"]),
        ];
        self.links.push(host.clone());
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            ip(&args).expect("make a veth link");
        }
        Link {
            host,
            host_ip,
            inside_ip,
        }
    }

    /// `ip` arguments that run `ip args` inside the namespace.
    fn inside(&self, args: &[&str]) -> Vec<String> {
        ["netns", "exec", &self.name, "ip"]
            .iter()
            .chain(args)
            .map(|arg| arg.to_string())
            .collect()
    }

    /// Takes `link` down (cut) or up again (healed), from this side.
    pub fn set(&self, link: &Link, up: bool) {
        ip(&["link", "set", &link.host, if up { "up" } else { "down" }]).expect("set a link");
    }

    /// A command that runs `program` inside the namespace (`ip netns exec` execs it: the
    /// child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for link in &self.links {
            let _ = ip(&["link", "delete", link]);
        }
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

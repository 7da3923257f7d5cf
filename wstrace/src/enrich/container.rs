//! Which container, and which Kubernetes pod, a process runs in: the id and
//! pod UID from its cgroup, the names from the container runtime's state on
//! disk (podman/CRI-O's `containers.json` and per-container `config.json`,
//! containerd's task bundles, Docker's `config.v2.json`) and from the
//! kubelet's log layout (`/var/log/containers/<pod>_<ns>_<container>-<id>.log`).
//!
//! Names in those files are chosen by whoever created the container or pod:
//! hostile like every other field. Every file is opened non-blocking,
//! without following a final symlink, only when it is a regular file, and
//! read to a size limit; values are cut to [`MAX_NAME`] bytes here and
//! escaped at the output edge. No runtime socket is used (a hung CRI or
//! Docker socket cannot hold the event loop), and each container is looked
//! up once (cached by id, misses too).
use std::{
    collections::HashMap,
    io::Read as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

use serde_json::Value;

pub use crate::model::Container;

/// Bytes kept of a name or image (a container named with 10 MB is cut).
pub const MAX_NAME: usize = 256;
/// Largest runtime state file read (`containers.json` lists every
/// container on the host: a few KB each).
const MAX_STATE_FILE: u64 = 32 * 1024 * 1024;
/// Largest per-container config read (an OCI `config.json`).
const MAX_CONFIG_FILE: u64 = 4 * 1024 * 1024;
/// Containers remembered (the cache is cleared past this: a host starts
/// containers for ever).
const MAX_CACHED: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
        }
    }
}

/// What the cgroup says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupIds {
    /// The runtime, when the path names it (`docker-`, `cri-containerd-`,
    /// `crio-`, `libpod-`); None for cgroupfs layouts (`/kubepods/...`).
    pub runtime: Option<Runtime>,
    pub container_id: String,
    /// Kubernetes pod UID (with dashes), from `pod<uid>` in the path.
    pub pod_uid: Option<String>,
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID as the kubelet writes it (`8d0a…-…`), from a cgroup segment's
/// form: systemd slices write its dashes as underscores.
fn pod_uid(s: &str) -> Option<String> {
    let uid = s.replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    ok.then_some(uid)
}

/// One cgroup path segment: a container id and the runtime it names.
fn segment_container(seg: &str) -> Option<(Option<Runtime>, &str)> {
    let base = seg.strip_suffix(".scope").unwrap_or(seg);
    // The runtimes' monitors (conmon) have scopes of their own: not the
    // container.
    if base.starts_with("crio-conmon-") || base.starts_with("libpod-conmon-") {
        return None;
    }
    for (prefix, rt) in [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ] {
        if let Some(id) = base.strip_prefix(prefix)
            && is_id(id)
        {
            return Some((Some(rt), id));
        }
    }
    is_id(base).then_some((None, base))
}

/// One segment's pod UID: `kubepods-burstable-pod<uid>.slice` (systemd
/// driver) or `pod<uid>` (cgroupfs driver).
fn segment_pod(seg: &str) -> Option<String> {
    let base = seg.strip_suffix(".slice").unwrap_or(seg);
    let tail = base.rsplit('-').next().unwrap_or(base);
    let tail = if base.starts_with("kubepods") {
        tail
    } else {
        base
    };
    tail.strip_prefix("pod").and_then(pod_uid)
}

/// The container of one cgroup path.
pub fn parse_cgroup_path(path: &str) -> Option<CgroupIds> {
    let mut found: Option<(Option<Runtime>, &str)> = None;
    let mut pod = None;
    let mut parent_docker = false;
    for seg in path.split('/') {
        if let Some(uid) = segment_pod(seg) {
            pod = Some(uid);
        }
        if let Some((rt, id)) = segment_container(seg) {
            // cgroupfs layouts name the runtime in the parent:
            // `/docker/<id>`, `/libpod_parent/libpod-<id>`.
            let rt = rt.or(parent_docker.then_some(Runtime::Docker));
            found = Some((rt, id));
        }
        parent_docker = seg == "docker";
    }
    let (runtime, id) = found?;
    Some(CgroupIds {
        runtime,
        container_id: id.to_string(),
        pod_uid: pod,
    })
}

/// The container in a whole `/proc/PID/cgroup`: the unified (v2) line
/// first, then every v1 hierarchy's (on hybrid hosts the v2 line is `/`
/// and only the v1 lines place the process).
pub fn parse_cgroup(text: &str) -> Option<CgroupIds> {
    let v2 = text.lines().filter_map(|l| l.strip_prefix("0::"));
    let all = text.lines().filter_map(|l| l.splitn(3, ':').nth(2));
    v2.chain(all).find_map(parse_cgroup_path)
}

/// `s` cut to [`MAX_NAME`] bytes on a character boundary.
fn bounded(s: &str) -> String {
    if s.len() <= MAX_NAME {
        return s.to_string();
    }
    let mut end = MAX_NAME;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Names from an OCI `config.json`'s annotations: the CRI plugin of
/// containerd (`io.kubernetes.cri.*`), CRI-O (`io.kubernetes.*`), podman
/// (`io.podman.annotations.*` has no name: see `containers.json`).
pub fn from_oci_config(c: &mut Container, config: &Value) {
    let Some(a) = config.get("annotations") else {
        return;
    };
    let pick = |keys: &[&str]| keys.iter().find_map(|k| str_at(a, k)).map(bounded);
    c.k8s_container = c.k8s_container.take().or_else(|| {
        pick(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ])
    });
    c.pod_name = c
        .pod_name
        .take()
        .or_else(|| pick(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]));
    c.namespace = c.namespace.take().or_else(|| {
        pick(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ])
    });
    c.pod_uid = c
        .pod_uid
        .take()
        .or_else(|| pick(&["io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"]));
    c.image = c.image.take().or_else(|| {
        pick(&[
            "io.kubernetes.cri.image-name",
            "io.kubernetes.cri-o.ImageName",
        ])
    });
    c.name = c.name.take().or_else(|| {
        pick(&[
            "io.kubernetes.cri-o.ContainerName",
            "io.kubernetes.cri-o.Name",
        ])
    });
}

/// Name and image from containers/storage's `containers.json` (podman,
/// CRI-O): an array of `{id, names, metadata}` where `metadata` is a JSON
/// string holding `image-name` (podman) or the CRI-O names.
pub fn from_containers_json(c: &mut Container, list: &Value) {
    let Some(entry) = list
        .as_array()
        .and_then(|l| l.iter().find(|e| str_at(e, "id") == Some(c.id.as_str())))
    else {
        return;
    };
    if c.name.is_none() {
        c.name = entry
            .get("names")
            .and_then(Value::as_array)
            .and_then(|n| n.first())
            .and_then(Value::as_str)
            .map(bounded);
    }
    let meta: Option<Value> = str_at(entry, "metadata").and_then(|m| serde_json::from_str(m).ok());
    if let Some(meta) = meta {
        if c.image.is_none() {
            c.image = str_at(&meta, "image-name").map(bounded);
        }
        if c.name.is_none() {
            c.name = str_at(&meta, "name").map(bounded);
        }
    }
}

/// Docker's `config.v2.json`: `Name` (`/web-1`) and `Config.Image`.
pub fn from_docker_config(c: &mut Container, config: &Value) {
    if c.name.is_none() {
        c.name = str_at(config, "Name").map(|n| bounded(n.trim_start_matches('/')));
    }
    if c.image.is_none() {
        c.image = config
            .get("Config")
            .and_then(|cfg| str_at(cfg, "Image"))
            .map(bounded);
    }
}

/// `<pod>_<namespace>_<container>-<id>.log`, the kubelet's links in
/// `/var/log/containers` (pod and namespace names cannot hold `_`).
pub fn parse_kubelet_log_name(file: &str, id: &str) -> Option<(String, String, String)> {
    let stem = file
        .strip_suffix(".log")?
        .strip_suffix(id)?
        .strip_suffix('-')?;
    let mut parts = stem.splitn(3, '_');
    let (pod, ns, container) = (parts.next()?, parts.next()?, parts.next()?);
    if pod.is_empty() || ns.is_empty() || container.is_empty() {
        return None;
    }
    Some((bounded(pod), bounded(ns), bounded(container)))
}

/// A root-owned runtime file, read the hostile way: non-blocking (a FIFO
/// planted there costs nothing), the final component not followed, regular
/// files only, at most `max` bytes (a longer file is not parsed at all).
fn read_state(path: &Path, max: u64) -> Option<Value> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || meta.len() > max {
        return None;
    }
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).ok()?;
    if buf.len() as u64 > max {
        return None;
    }
    serde_json::from_slice(&buf).ok()
}

/// Where the runtimes keep their state (a different root in tests).
#[derive(Clone, Debug)]
pub struct StateRoots {
    pub root: PathBuf,
}

impl Default for StateRoots {
    fn default() -> Self {
        StateRoots {
            root: PathBuf::from("/"),
        }
    }
}

impl StateRoots {
    fn at(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// Everything known about the container of `ids`.
    pub fn lookup(&self, ids: &CgroupIds) -> Container {
        let id = ids.container_id.as_str();
        let mut c = Container {
            id: id.to_string(),
            runtime: ids.runtime.map(Runtime::as_str),
            pod_uid: ids.pod_uid.clone(),
            ..Container::default()
        };
        // containerd (CRI and others): the task bundle's OCI config.
        for ns in ["k8s.io", "moby", "default"] {
            let p = self.at(&format!(
                "/run/containerd/io.containerd.runtime.v2.task/{ns}/{id}/config.json"
            ));
            if let Some(v) = read_state(&p, MAX_CONFIG_FILE) {
                from_oci_config(&mut c, &v);
                c.runtime = c.runtime.or(Some(Runtime::Containerd.as_str()));
                break;
            }
        }
        // containers/storage (CRI-O, podman): the per-container config,
        // then the list with names and image.
        for base in ["/run/containers/storage", "/var/lib/containers/storage"] {
            let p = self.at(&format!(
                "{base}/overlay-containers/{id}/userdata/config.json"
            ));
            if let Some(v) = read_state(&p, MAX_CONFIG_FILE) {
                from_oci_config(&mut c, &v);
            }
        }
        if c.name.is_none() || c.image.is_none() {
            let p = self.at("/var/lib/containers/storage/overlay-containers/containers.json");
            if let Some(v) = read_state(&p, MAX_STATE_FILE) {
                from_containers_json(&mut c, &v);
            }
        }
        if c.name.is_none() {
            let p = self.at(&format!("/var/lib/docker/containers/{id}/config.v2.json"));
            if let Some(v) = read_state(&p, MAX_CONFIG_FILE) {
                from_docker_config(&mut c, &v);
                c.runtime = c.runtime.or(Some(Runtime::Docker.as_str()));
            }
        }
        // The kubelet's log links name pod, namespace and container for
        // any runtime.
        if c.pod_name.is_none()
            && let Ok(dir) = std::fs::read_dir(self.at("/var/log/containers"))
        {
            for e in dir.flatten().take(100_000) {
                if let Some(name) = e.file_name().to_str()
                    && let Some((pod, ns, container)) = parse_kubelet_log_name(name, id)
                {
                    c.pod_name = Some(pod);
                    c.namespace = Some(ns);
                    c.k8s_container = c.k8s_container.take().or(Some(container));
                    break;
                }
            }
        }
        c
    }
}

/// Containers looked up so far, by id (misses cached too: a container
/// without state files is not searched for again on every new process).
#[derive(Default)]
pub struct Containers {
    roots: StateRoots,
    known: HashMap<String, Arc<Container>>,
}

impl Containers {
    #[cfg(test)]
    pub fn with_roots(roots: StateRoots) -> Containers {
        Containers {
            roots,
            known: HashMap::new(),
        }
    }

    /// The container a process with this `/proc/PID/cgroup` runs in.
    pub fn of_cgroup(&mut self, cgroup_text: &str) -> Option<Arc<Container>> {
        let ids = parse_cgroup(cgroup_text)?;
        if let Some(c) = self.known.get(&ids.container_id) {
            return Some(c.clone());
        }
        if self.known.len() >= MAX_CACHED {
            self.known.clear();
        }
        let c = Arc::new(self.roots.lookup(&ids));
        self.known.insert(ids.container_id, c.clone());
        Some(c)
    }
}

/// The daemon's one cache of containers (the process table reads it when
/// it describes a new process).
pub fn shared() -> &'static Mutex<Containers> {
    static SHARED: OnceLock<Mutex<Containers>> = OnceLock::new();
    SHARED.get_or_init(|| Mutex::new(Containers::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e2c1b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";
    const UID: &str = "8d0a4c32-5b1e-4f7a-9c2d-1e3f5a7b9c0d";

    fn ids(path: &str) -> Option<(Option<Runtime>, String, Option<String>)> {
        parse_cgroup_path(path).map(|c| (c.runtime, c.container_id, c.pod_uid))
    }

    #[test]
    fn real_world_cgroup_paths() {
        let u = UID.replace('-', "_");
        let cases: Vec<(String, Option<Runtime>, Option<&str>)> = vec![
            // Docker, systemd driver (cgroup v2) and cgroupfs (v1).
            (
                format!("/system.slice/docker-{ID}.scope"),
                Some(Runtime::Docker),
                None,
            ),
            (format!("/docker/{ID}"), Some(Runtime::Docker), None),
            // Kubernetes + containerd, systemd driver, each QoS class.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                Some(Runtime::Containerd),
                Some(UID),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"),
                Some(Runtime::Containerd),
                Some(UID),
            ),
            // Kubernetes, cgroupfs driver (any runtime): pod<uid>/<id>.
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                None,
                Some(UID),
            ),
            // CRI-O, systemd driver.
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"
                ),
                Some(Runtime::CriO),
                Some(UID),
            ),
            // Podman: systemd (rootful, rootless, with the cgroup
            // namespace's /container leaf) and cgroupfs.
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                Some(Runtime::Podman),
                None,
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Some(Runtime::Podman),
                None,
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                Some(Runtime::Podman),
                None,
            ),
            (
                format!("/libpod_parent/libpod-{ID}"),
                Some(Runtime::Podman),
                None,
            ),
        ];
        for (path, rt, pod) in cases {
            assert_eq!(
                ids(&path),
                Some((rt, ID.to_string(), pod.map(str::to_string))),
                "{path}"
            );
        }
        // Not containers: a login session, a service, the runtimes'
        // monitors, a pod's own slice.
        for path in [
            "/user.slice/user-0.slice/session-1.scope".to_string(),
            "/system.slice/nginx.service".to_string(),
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-conmon-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod{u}.slice"),
            "/".to_string(),
        ] {
            assert_eq!(ids(&path), None, "{path}");
        }
    }

    #[test]
    fn hybrid_hosts_place_the_process_in_a_v1_line() {
        // cgroup v1 + an empty unified line (this development VM's layout):
        // podman with the cgroupfs manager.
        let text = format!(
            "9:name=systemd:/libpod_parent/libpod-{ID}\n4:memory:/libpod_parent/libpod-{ID}\n0::/\n"
        );
        let c = parse_cgroup(&text).expect("found");
        assert_eq!(c.container_id, ID);
        assert_eq!(c.runtime, Some(Runtime::Podman));
        assert_eq!(parse_cgroup("0::/\n1:cpu:/\n"), None);
    }

    #[test]
    fn runtime_state_names_the_container() {
        let mut c = Container {
            id: ID.into(),
            ..Container::default()
        };
        let cri: Value = serde_json::json!({"annotations": {
            "io.kubernetes.cri.container-name": "web",
            "io.kubernetes.cri.sandbox-name": "web-7d9f-abcde",
            "io.kubernetes.cri.sandbox-namespace": "shop",
            "io.kubernetes.cri.image-name": "registry.example/shop/web:1.2"
        }});
        from_oci_config(&mut c, &cri);
        assert_eq!(c.k8s_container.as_deref(), Some("web"));
        assert_eq!(c.pod_name.as_deref(), Some("web-7d9f-abcde"));
        assert_eq!(c.namespace.as_deref(), Some("shop"));
        assert_eq!(c.image.as_deref(), Some("registry.example/shop/web:1.2"));

        let mut p = Container {
            id: ID.into(),
            ..Container::default()
        };
        let list = serde_json::json!([
            {"id": "other", "names": ["nope"]},
            {"id": ID, "names": ["ws-server"], "metadata": "{\"image-name\":\"localhost/ws:1\",\"name\":\"ws-server\"}"}
        ]);
        from_containers_json(&mut p, &list);
        assert_eq!(p.name.as_deref(), Some("ws-server"));
        assert_eq!(p.image.as_deref(), Some("localhost/ws:1"));

        let mut d = Container::default();
        from_docker_config(
            &mut d,
            &serde_json::json!({"Name": "/web-1", "Config": {"Image": "nginx:1.25"}}),
        );
        assert_eq!(d.name.as_deref(), Some("web-1"));
        assert_eq!(d.image.as_deref(), Some("nginx:1.25"));
    }

    #[test]
    fn kubelet_log_links_name_pod_namespace_and_container() {
        assert_eq!(
            parse_kubelet_log_name(&format!("web-7d9f-abcde_shop_web-sidecar-{ID}.log"), ID),
            Some(("web-7d9f-abcde".into(), "shop".into(), "web-sidecar".into()))
        );
        assert_eq!(
            parse_kubelet_log_name(&format!("x_y_z-{ID}.log"), "0000"),
            None
        );
        assert_eq!(
            parse_kubelet_log_name(&format!("nounderscore-{ID}.log"), ID),
            None
        );
    }

    #[test]
    fn hostile_names_are_cut_and_files_refused() {
        let mut c = Container {
            id: ID.into(),
            ..Container::default()
        };
        let huge = "\u{1b}]0;owned\u{7}".to_string() + &"x".repeat(10 << 20);
        from_containers_json(&mut c, &serde_json::json!([{"id": ID, "names": [huge]}]));
        let name = c.name.expect("name");
        assert!(name.len() <= MAX_NAME + '…'.len_utf8());
        // Kept raw here; escaped at the output edge.
        assert!(name.starts_with('\u{1b}'));

        let d = std::env::temp_dir().join(format!("wstrace-container-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        // A FIFO is not waited on; a symlink is not followed; too big is
        // not read.
        let fifo = d.join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        assert!(read_state(&fifo, 1024).is_none());
        std::fs::write(d.join("real.json"), "{}").unwrap();
        std::os::unix::fs::symlink(d.join("real.json"), d.join("link.json")).unwrap();
        assert!(read_state(&d.join("link.json"), 1024).is_none());
        assert!(read_state(&d.join("real.json"), 1024).is_some());
        assert!(read_state(&d.join("real.json"), 1).is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn state_under_a_root_is_found_and_cached() {
        let d = std::env::temp_dir().join(format!("wstrace-container-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let bundle = d.join(format!(
            "run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}"
        ));
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-name":"api","io.kubernetes.cri.sandbox-name":"api-0","io.kubernetes.cri.sandbox-namespace":"prod"}}"#,
        )
        .unwrap();
        let mut cs = Containers::with_roots(StateRoots { root: d.clone() });
        let u = UID.replace('-', "_");
        let text = format!("0::/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope\n");
        let c = cs.of_cgroup(&text).expect("container");
        assert_eq!(c.runtime, Some("containerd"));
        assert_eq!(c.pod_name.as_deref(), Some("api-0"));
        assert_eq!(c.namespace.as_deref(), Some("prod"));
        assert_eq!(c.k8s_container.as_deref(), Some("api"));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        // Any runtime, cgroupfs driver: the kubelet's log links name the
        // pod (the file names a kubelet makes; their targets are not read).
        let other = ID.replace('3', "4");
        let logs = d.join("var/log/containers");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join(format!("api-1_prod_sidecar-{other}.log")), "").unwrap();
        let c = cs
            .of_cgroup(&format!(
                "11:memory:/kubepods/burstable/pod{UID}/{other}\n0::/\n"
            ))
            .expect("container");
        assert_eq!(c.runtime, None);
        assert_eq!(c.pod_name.as_deref(), Some("api-1"));
        assert_eq!(c.namespace.as_deref(), Some("prod"));
        assert_eq!(c.k8s_container.as_deref(), Some("sidecar"));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        // Cached: the file is not read again.
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(
            cs.of_cgroup(&text).expect("cached").pod_name.as_deref(),
            Some("api-0")
        );
    }
}

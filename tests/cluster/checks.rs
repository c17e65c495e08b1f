//! The cluster tests of issue 14, each on its own cache directory on the NFS export, with
//! nodes working at the same time. `node1..3` are the clients; the server only serves NFS
//! (and HTTP for the remote test).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, LEASE_SECS, Node, Out};

/// Distinct input files: 64 KiB `d{node}-{proc}` for the concurrency test; `same` (256 KiB)
/// added under many names; 1 MiB `g{k}` for gc; `remote.sif` (4 MiB) for the HTTP remote.
pub fn make_data(host: &Path) {
    let dir = host.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let mut seed = 0x5eed_u64;
    let mut write = |name: &str, len: usize| {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = seed;
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            buf.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        buf.truncate(len);
        std::fs::write(dir.join(name), buf).unwrap();
    };
    for i in 1..=3 {
        for p in 1..=8 {
            write(&format!("d{i}-{p}"), 64 << 10);
        }
    }
    write("same", 256 << 10);
    for k in 0..12 {
        write(&format!("g{k}"), 1 << 20);
    }
    write("remote.sif", 4 << 20);
}

/// Run one script on each of several nodes at the same time; outputs in the same order.
pub fn par(jobs: &[(&Node, String)]) -> Vec<Out> {
    std::thread::scope(|s| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|(n, script)| s.spawn(move || n.sh_timeout(script, Duration::from_secs(240))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Each test's cache, on the export as the clients mount it.
fn cache(test: &str) -> String {
    format!("/mnt/nfs/{test}")
}

/// A new cache for `test`, made on node1, holding `/host/data/g0` as `TEST/base:1`.
fn cache_with_base(cl: &Cluster, test: &str) -> String {
    let c = cache(test);
    cl.clients[0]
        .sh(&format!(
            "sregistry --cache {c} init && sregistry --cache {c} add /host/data/g0 --name {test}/base:1"
        ))
        .ok();
    c
}

/// `verify` of the whole cache from one node: exit 0 and no problem.
#[track_caller]
fn verify_clean(node: &Node, c: &str) {
    let v = node.sh(&format!("sregistry --cache {c} verify"));
    assert_eq!(
        v.code, 0,
        "verify on {} found problems:\n{}{}",
        node.name, v.stdout, v.stderr
    );
}

/// Wait on `node` until `file` contains `text` (a paused process says "paused at ...").
#[track_caller]
fn wait_for(node: &Node, file: &str, text: &str, timeout: Duration) {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if node.sh(&format!("grep -q '{text}' {file}")).code == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = node.sh(&format!("cat {file}")).stdout;
    panic!("{}: `{text}` never appeared in {file}: {seen}", node.name);
}

/// Start an add on `node` that stops holding the exclusive index lock (the test build's
/// pause point before its commit) until `/tmp/TAG.resume` exists there; its output goes to
/// `/tmp/TAG.out` and `/tmp/TAG.err`, its exit code to `/tmp/TAG.rc`. Returns once it holds
/// the lock.
fn hold_index_lock(node: &Node, c: &str, tag: &str, file: &str) {
    node.sh(&format!(
        "rm -f /tmp/{tag}.resume /tmp/{tag}.rc; SREGISTRY_TEST_PAUSE=add-index-uncommitted \
         SREGISTRY_TEST_RESUME=/tmp/{tag}.resume setsid sh -c 'sregistry-hooks --cache {c} \
         add /host/data/{file} --name {tag}/held:1 >/tmp/{tag}.out 2>/tmp/{tag}.err; \
         echo $? >/tmp/{tag}.rc' >/dev/null 2>&1 &"
    ))
    .ok();
    wait_for(
        node,
        &format!("/tmp/{tag}.err"),
        "paused at",
        Duration::from_secs(60),
    );
}

/// Test 1: `doctor` on every node passes its lock check and names the filesystem NFS,
/// while the nodes work; and the locks really are coherent across nodes: while a process
/// on node1 holds the exclusive index lock (paused inside an add), a `get` on each other
/// node waits for it (and says so), and goes on once node1 lets go.
pub fn doctor_locks_coherent(cl: &Cluster) {
    let c = cache_with_base(cl, "t1");
    let [n1, n2, n3] = [&cl.clients[0], &cl.clients[1], &cl.clients[2]];

    // doctor on all three nodes at once, while each also adds.
    let outs = par(&cl
        .clients
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n,
                format!(
                    "sregistry --cache {c} add /host/data/g{} --name t1/n{i}:1 >/dev/null &\n\
                     sregistry --cache {c} doctor; rc=$?; wait; exit $rc",
                    i + 1
                ),
            )
        })
        .collect::<Vec<_>>());
    for (n, o) in cl.clients.iter().zip(&outs) {
        assert_eq!(
            o.code, 0,
            "doctor on {} failed:\n{}{}",
            n.name, o.stdout, o.stderr
        );
        let line = |check: &str| {
            o.stdout
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(check))
                .unwrap_or_else(|| panic!("doctor on {} has no {check} line: {}", n.name, o.stdout))
                .to_string()
        };
        assert!(
            line("locks").starts_with("ok"),
            "{}: {}",
            n.name,
            line("locks")
        );
        let fs = line("filesystem");
        assert!(
            fs.starts_with("ok") && fs.contains("nfs (cluster)"),
            "{}: doctor does not see NFS: {fs}",
            n.name
        );
        assert!(fs.contains("vers=4.2"), "{}: not NFSv4.2: {fs}", n.name);
    }

    // Across nodes: node1 holds the exclusive index lock, paused before its commit.
    hold_index_lock(n1, &c, "t1", "g5");
    // A get on node2 and node3 cannot have the index meanwhile: it waits, says so, and
    // gives up after the bound with a message naming the lock file.
    let outs = par(&[n2, n3].map(|n| {
        (
            n,
            format!("SREGISTRY_LOCK_TIMEOUT=4 sregistry --cache {c} get t1/base:1"),
        )
    }));
    for (n, o) in [n2, n3].iter().zip(&outs) {
        assert_eq!(
            o.code, 1,
            "{}: get did not wait for node1's lock: {o:?}",
            n.name
        );
        assert!(
            o.stderr.contains("waiting for lock on") && o.stderr.contains("index.lock"),
            "{}: no word of the wait: {}",
            n.name,
            o.stderr
        );
    }
    // The same get, started now with the default bound, goes on once node1 lets go.
    let waiting: Vec<_> = [n2, n3]
        .iter()
        .map(|n| {
            n.sh(&format!(
                "sregistry --cache {c} get t1/held:1 >/tmp/t1.get 2>/tmp/t1.geterr & echo $! >/tmp/t1.pid"
            ))
            .ok();
            *n
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    n1.sh("touch /tmp/t1.resume").ok();
    n1.sh(
        "while kill -0 $(pidof sregistry-hooks) 2>/dev/null; do sleep 0.1; done; cat /tmp/t1.err",
    )
    .ok();
    let added = n1.sh("cat /tmp/t1.out").stdout;
    assert!(
        added.contains("/blobs/blake3/"),
        "node1's add did not finish: {added}"
    );
    for n in waiting {
        let o = n
            .sh("wait_pid=$(cat /tmp/t1.pid); while kill -0 $wait_pid 2>/dev/null; do sleep 0.1; done; cat /tmp/t1.get; cat /tmp/t1.geterr >&2")
            .ok();
        assert_eq!(
            o.stdout.trim(),
            added.trim(),
            "{}: the waiting get did not find node1's add: {o:?}",
            n.name
        );
    }
    verify_clean(n3, &c);
}

/// Test 2: 3 nodes x 8 processes add distinct and identical files at once and get each
/// other's names. Every add succeeds, every get ends with the right content, every name
/// is in the index, the identical content is stored once, `tmp/` is empty, verify clean.
pub fn concurrent_adds_and_gets(cl: &Cluster) {
    let c = cache("t2");
    cl.clients[0]
        .sh(&format!("sregistry --cache {c} init"))
        .ok();
    // Each process: add its own file and the shared one, then get its peers' files on the
    // other nodes (exit 3 while a peer has not added yet; anything else is a failure) and
    // compare the content with the original.
    let script = |i: usize| {
        format!(
            r#"
C={c}; mkdir -p /tmp/t2; rm -f /tmp/t2/*
work() {{
  p=$1
  sregistry --cache $C add /host/data/d{i}-$p --name node{i}/img$p:v1 >/dev/null 2>>/tmp/t2/err.$p || echo "add img$p: $?" >>/tmp/t2/fail
  sregistry --cache $C add /host/data/same --name node{i}/same$p:v1 >/tmp/t2/same.$p 2>>/tmp/t2/err.$p || echo "add same$p: $?" >>/tmp/t2/fail
  for j in 1 2 3; do
    for q in $p $((p % 8 + 1)); do
      n=0
      while :; do
        path=$(sregistry --cache $C get node$j/img$q:v1 2>>/tmp/t2/err.$p); rc=$?
        [ $rc = 0 ] && break
        [ $rc = 3 ] || {{ echo "get node$j/img$q: exit $rc" >>/tmp/t2/fail; break; }}
        n=$((n + 1)); [ $n -lt 600 ] || {{ echo "get node$j/img$q: never there" >>/tmp/t2/fail; break; }}
        sleep 0.1
      done
      [ $rc = 0 ] && {{ cmp -s "$path" /host/data/d$j-$q || echo "get node$j/img$q: content differs ($path)" >>/tmp/t2/fail; }}
    done
  done
}}
for p in 1 2 3 4 5 6 7 8; do work $p & done
wait
cat /tmp/t2/same.* | sort -u
if [ -s /tmp/t2/fail ]; then cat /tmp/t2/fail >&2; cat /tmp/t2/err.* >&2; exit 1; fi
"#
        )
    };
    let outs = par(&cl
        .clients
        .iter()
        .enumerate()
        .map(|(i, n)| (n, script(i + 1)))
        .collect::<Vec<_>>());
    let mut same_paths = BTreeSet::new();
    for (n, o) in cl.clients.iter().zip(&outs) {
        assert_eq!(o.code, 0, "{}: failures:\n{}", n.name, o.stderr);
        same_paths.extend(o.stdout.lines().map(str::to_string));
    }
    assert_eq!(
        same_paths.len(),
        1,
        "identical content got more than one path: {same_paths:?}"
    );
    let n3 = &cl.clients[2];
    let list = n3.sh(&format!("sregistry --cache {c} list")).ok().stdout;
    for i in 1..=3 {
        for p in 1..=8 {
            for name in [format!("node{i}/img{p}:v1"), format!("node{i}/same{p}:v1")] {
                assert!(list.contains(&name), "{name} is not in the index:\n{list}");
            }
        }
    }
    let files = n3
        .sh(&format!(
            "find {c}/v1/blobs -type f | wc -l; ls -A {c}/v1/tmp | wc -l"
        ))
        .ok()
        .stdout;
    let counts: Vec<usize> = files.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(
        counts[0], 25,
        "24 distinct files and one shared, stored once each"
    );
    assert_eq!(counts[1], 0, "tmp/ is not empty after every add finished");
    verify_clean(n3, &c);
}

/// Test 3: gc evicts on node1 while node2 and node3 loop `get` + full read of names they
/// use. Names used within --min-idle survive, and no get or read fails or comes up short.
/// The hot names are the oldest of all (added three hours ago, before the cold ones) and
/// gc runs with `--max-size 0`, so least-recently-used order alone would evict them too:
/// only their recorded uses (a `get` each just before gc, and the readers' gets) within
/// `--min-idle` keep them, and every cold name goes.
/// A job on node1 keeps an evicted image open: NFS renames its unlinked file to `.nfs*`,
/// which later gc runs (also from another node) must leave alone and verify must not report.
pub fn gc_against_running_jobs(cl: &Cluster) {
    let c = cache("t3");
    let [n1, n2, n3] = [&cl.clients[0], &cl.clients[1], &cl.clients[2]];
    // Hot names, added three hours ago; cold names, added (and last used) two hours ago;
    // then one use of each hot name now, recorded in the index.
    n1.sh(&format!(
        "set -e; sregistry --cache {c} init; now=$(date +%s)
         for k in 0 1 2 3; do SREGISTRY_NOW=$(( now - 10800 )) sregistry --cache {c} add /host/data/g$k --name t3/hot$k:1 >/dev/null; done
         for k in 4 5 6 7 8 9 10 11; do SREGISTRY_NOW=$(( now - 7200 )) sregistry --cache {c} add /host/data/g$k --name t3/cold$k:1 >/dev/null; done
         for k in 0 1 2 3; do sregistry --cache {c} get t3/hot$k:1 >/dev/null; done"
    ))
    .ok();
    // A job on node1 holds a cold image open: it started two hours ago, when it asked
    // for the image (its use is that old too).
    n1.sh(&format!(
        "p=$(SREGISTRY_NOW=$(( $(date +%s) - 7200 )) sregistry --cache {c} get t3/cold4:1); setsid sh -c \"exec 3<$p; sleep 1; touch /tmp/t3.opened; \
         while [ ! -e /tmp/t3.release ]; do sleep 0.2; done; cat <&3 | wc -c >/tmp/t3.held\" >/dev/null 2>&1 &
         while [ ! -e /tmp/t3.opened ]; do sleep 0.1; done"
    ))
    .ok();
    let reader = |secs: u64| {
        format!(
            r#"
C={c}; end=$(( $(date +%s) + {secs} )); n=0; bad=0
while [ $(date +%s) -lt $end ]; do
  for k in 0 1 2 3; do
    path=$(sregistry --cache $C get t3/hot$k:1) || {{ echo "get hot$k failed: $?" >&2; bad=$((bad+1)); continue; }}
    size=$(cat "$path" | wc -c) || {{ echo "read $path failed" >&2; bad=$((bad+1)); }}
    [ "$size" = 1048576 ] || {{ echo "short read of $path: $size" >&2; bad=$((bad+1)); }}
    cmp -s "$path" /host/data/g$k || {{ echo "content of $path differs" >&2; bad=$((bad+1)); }}
    n=$((n+1))
  done
done
echo $n; [ $bad = 0 ]
"#
        )
    };
    let gc = format!(
        "sleep 3; sregistry --cache {c} gc --max-size 0; rc=$?; sleep 2; sregistry --cache {c} gc --max-size 0 || rc=$?; exit $rc"
    );
    let outs = par(&[(n1, gc), (n2, reader(12)), (n3, reader(12))]);
    assert_eq!(outs[0].code, 0, "gc failed: {:?}", outs[0]);
    for (n, o) in [n2, n3].iter().zip(&outs[1..]) {
        assert_eq!(
            o.code, 0,
            "{}: a get or read failed under gc:\n{}",
            n.name, o.stderr
        );
        let rounds: u32 = o.stdout.trim().parse().unwrap();
        assert!(rounds >= 8, "{}: only {rounds} get+read rounds", n.name);
    }
    let list = n2.sh(&format!("sregistry --cache {c} list")).ok().stdout;
    for k in 0..4 {
        assert!(
            list.contains(&format!("t3/hot{k}:1")),
            "gc removed a name in use:\n{list}"
        );
    }
    let cold_left = (4..12)
        .filter(|k| list.contains(&format!("t3/cold{k}:1")))
        .count();
    assert_eq!(
        cold_left, 0,
        "gc --max-size 0 did not evict every idle name:\n{list}"
    );

    // The job's unlinked image lives on as tmp/.nfs* on the export.
    let nfs = n1
        .sh(&format!("ls -A {c}/v1/tmp | grep '^\\.nfs' || true"))
        .stdout;
    assert!(
        !nfs.trim().is_empty(),
        "no .nfs file for the image held open on node1 (tmp/: {})",
        n1.sh(&format!("ls -la {c}/v1/tmp")).stdout
    );
    // Later gc runs, with the .nfs file past the tmp grace (the clock moved on a day),
    // from node1 and from node2, and verify: the file stays, nothing calls it a problem.
    let later = "SREGISTRY_NOW=$(( $(date +%s) + 86400 ))";
    for n in [n1, n2] {
        let o = n.sh(&format!("{later} sregistry --cache {c} gc --min-idle 1h"));
        assert_eq!(o.code, 0, "{}: gc with a .nfs file in tmp/: {o:?}", n.name);
    }
    let v = n3.sh(&format!("{later} sregistry --cache {c} verify"));
    let still = n1
        .sh(&format!("ls -A {c}/v1/tmp | grep '^\\.nfs' || true"))
        .stdout;
    n1.sh("touch /tmp/t3.release; while [ ! -e /tmp/t3.held ]; do sleep 0.1; done; sleep 0.5")
        .ok();
    let held = n1.sh("cat /tmp/t3.held").stdout;
    assert_eq!(
        still.trim(),
        nfs.trim(),
        "gc deleted the .nfs file of an open image (the job then read {held:?} bytes)"
    );
    assert_eq!(held.trim(), "1048576", "the job's open image was cut short");
    assert_eq!(v.code, 0, "verify counts the .nfs file as a problem: {v:?}");
    // Once the job closes the image, the NFS client removes the .nfs file itself.
    let gone = n1
        .sh(&format!(
            "sleep 1; ls -A {c}/v1/tmp | grep '^\\.nfs' || true"
        ))
        .stdout;
    assert_eq!(gone.trim(), "", "the .nfs file outlived the job");
    verify_clean(n2, &c);
}

/// Test 4: 3 nodes x 8 processes `get` the same uncached HTTP remote (busybox httpd on the
/// server). It is downloaded once and every caller prints the same path.
pub fn pull_once_across_nodes(cl: &Cluster) {
    let c = cache("t4");
    cl.server
        .sh("cp /host/data/remote.sif /export/www/image.sif && cp /host/data/g0 /export/www/solo.sif")
        .ok();
    cl.clients[0]
        .sh(&format!("sregistry --cache {c} init"))
        .ok();
    let requests = |file: &str| {
        let log = cl.server.sh("cat /export/httpd.log").ok().stdout;
        let n = log
            .lines()
            .filter(|l| l.ends_with(&format!("url:/{file}")))
            .count();
        (n, log)
    };
    // How many requests one download makes when nobody else asks (a HEAD and a GET).
    cl.clients[0]
        .sh(&format!(
            "sregistry --cache {c} get --insecure http://10.0.0.1:8080/solo.sif"
        ))
        .ok();
    let (one, _) = requests("solo.sif");
    assert!(one >= 1, "the server logged no request for a download");
    let url = "http://10.0.0.1:8080/image.sif";
    let script = format!(
        r#"mkdir -p /tmp/t4; rm -f /tmp/t4/*
for p in 1 2 3 4 5 6 7 8; do
  (sregistry --cache {c} get --insecure {url} >/tmp/t4/out.$p 2>/tmp/t4/err.$p; echo $? >/tmp/t4/rc.$p) &
done
wait
for p in 1 2 3 4 5 6 7 8; do echo "$(cat /tmp/t4/rc.$p) $(cat /tmp/t4/out.$p)"; done
cat /tmp/t4/err.* >&2"#
    );
    let outs = par(&cl
        .clients
        .iter()
        .map(|n| (n, script.clone()))
        .collect::<Vec<_>>());
    let mut paths = BTreeMap::new();
    for (n, o) in cl.clients.iter().zip(&outs) {
        for l in o.stdout.lines() {
            let (rc, path) = l.split_once(' ').unwrap_or((l, ""));
            assert_eq!(rc, "0", "{}: a get failed:\n{}", n.name, o.stderr);
            *paths.entry(path.to_string()).or_insert(0) += 1;
        }
    }
    assert_eq!(paths.len(), 1, "callers printed different paths: {paths:?}");
    assert_eq!(paths.values().sum::<i32>(), 24, "not every caller answered");
    let (gets, log) = requests("image.sif");
    assert_eq!(
        gets, one,
        "24 callers made {gets} requests, one download makes {one}: fetched more than once\n{log}"
    );
    verify_clean(&cl.clients[1], &c);
}

/// The kinds of problem `verify --json` reports, from `node`.
fn verify_problems(node: &Node, c: &str) -> Vec<String> {
    let v = node.sh(&format!("sregistry --cache {c} --json verify"));
    let j: serde_json::Value = serde_json::from_str(&v.stdout)
        .unwrap_or_else(|e| panic!("verify --json on {}: {e}: {v:?}", node.name));
    j["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Test 5: a node dies (its qemu killed) while a process on it holds the exclusive index
/// lock. The server keeps the lock until the dead client's NFSv4 lease expires; the other
/// nodes wait, say so, and go on then, well within the lock wait's bound. Adds the dead
/// node reported done are all there, its unfinished add is not, and the cache verifies
/// clean once gc has taken the unfinished add's blob.
pub fn node_dies_holding_the_lock(cl: &Cluster) {
    let c = cache_with_base(cl, "t5");
    let [n1, n2, n3] = [&cl.clients[0], &cl.clients[1], &cl.clients[2]];
    n2.sh(&format!(
        "for k in 1 2 3; do sregistry --cache {c} add /host/data/g$k --name t5/done$k:1 || exit 1; done"
    ))
    .ok();
    n2.sh(&format!(
        "SREGISTRY_TEST_PAUSE=add-index-uncommitted setsid sregistry-hooks --cache {c} \
         add /host/data/g4 --name t5/doomed:1 >/tmp/t5.out 2>/tmp/t5.err &"
    ))
    .ok();
    wait_for(n2, "/tmp/t5.err", "paused at", Duration::from_secs(30));
    let held = n1.sh(&format!(
        "SREGISTRY_LOCK_TIMEOUT=2 sregistry --cache {c} get t5/base:1"
    ));
    assert_eq!(
        held.code, 1,
        "node2's lock did not hold node1 off: {held:?}"
    );

    // Power cut on node2.
    n2.kill();
    let t0 = Instant::now();
    let jobs = [
        (n1, format!("sregistry --cache {c} get t5/base:1")),
        (
            n3,
            format!("sregistry --cache {c} add /host/data/g5 --name t5/after:1"),
        ),
    ];
    let timed: Vec<(Out, f64)> = std::thread::scope(|s| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|(n, script)| {
                s.spawn(move || {
                    let o = n.sh_timeout(script, Duration::from_secs(400));
                    (o, t0.elapsed().as_secs_f64())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let lease = cl.lease_secs as f64;
    for ((n, _), (o, secs)) in jobs.iter().zip(&timed) {
        eprintln!(
            "cluster: {} went on {secs:.1} s after node2 died (lease {lease} s); it said: {}",
            n.name,
            o.stderr.trim()
        );
        assert_eq!(o.code, 0, "{}: failed after node2 died: {o:?}", n.name);
        assert!(
            o.stderr.contains("waiting for lock on") && o.stderr.contains("index.lock"),
            "{}: waited without a word: {o:?}",
            n.name
        );
        // The server let go when the lease ran out, not at the kill, and not much after
        // (Linux checks for expired clients once per lease period). The dead client last
        // renewed its lease at most 2/3 of a lease before it died.
        assert!(
            *secs >= lease / 3.0 - 1.0,
            "{}: went on after {secs:.1} s, before node2's lease ({lease} s) could expire: \
             the lock did not hold",
            n.name
        );
        assert!(
            *secs <= 3.0 * lease + 15.0,
            "{}: still blocked {secs:.1} s after node2 died (lease {lease} s)",
            n.name
        );
    }
    // The lock wait's default bound must outlast what a default lease (90 s) costs: the
    // wait above was about one lease, and Linux may take up to two.
    let bound = sregistry::cache::lock::DEFAULT_TIMEOUT;
    assert!(
        bound >= Duration::from_secs(2 * 90 + 30),
        "the default lock wait ({bound:?}) is shorter than two default NFSv4 leases"
    );

    let check = format!(
        "set -e; for k in 1 2 3; do cmp $(sregistry --cache {c} get t5/done$k:1) /host/data/g$k; done
         cmp $(sregistry --cache {c} get t5/after:1) /host/data/g5
         sregistry --cache {c} get t5/doomed:1 && exit 9 || [ $? = 3 ]"
    );
    n1.sh(&check).ok();
    // The unfinished add left its blob without a record (an orphan, as after any crash
    // at that point); nothing else is wrong, and gc takes it.
    let problems = verify_problems(n3, &c);
    assert!(
        problems.iter().all(|k| k == "orphan" || k == "stray-tmp") && problems.len() <= 1,
        "verify after the crash: {problems:?}"
    );
    n3.sh(&format!("sregistry --cache {c} gc")).ok();
    verify_clean(n1, &c);

    // node2 boots again, mounts, and sees the same cache.
    let t = Instant::now();
    cl.reboot(n2, Duration::from_secs(120));
    eprintln!("cluster: node2 back in {:.1} s", t.elapsed().as_secs_f64());
    n2.sh(&check).ok();
}

/// One command of the reboot test's loops, as its node logged it.
struct LoopCmd {
    node: String,
    kind: String,
    name: String,
    file: String,
    rc: String,
    /// Start and end on the node's clock, in microseconds.
    t0: u64,
    t1: u64,
    /// Logged after the server came back (by line count on its node).
    after: bool,
    err: String,
}

impl LoopCmd {
    /// A failure docs/shared-cache.md allows through a server reboot, in one `error:` line:
    /// a writer whose lock the server did not give back; a `get` whose shared lock was lost
    /// reading the index while a writer changed it ("it says the index is damaged").
    fn allowed_failure(&self) -> bool {
        let msg: Vec<&str> = self
            .err
            .lines()
            .filter(|l| !l.starts_with("waiting for lock") && !l.starts_with("paused at"))
            .collect();
        let one = msg.len() == 1 && msg[0].starts_with("error: ") && !self.err.contains("panicked");
        let lost_lock = self.err.contains("did not give back this client's lock");
        one && self.rc == "1" && (lost_lock || (self.kind == "get" && self.err.contains("damaged")))
    }
}

/// Test 6: the server reboots (killed, booted again with its grace period on) while every
/// client adds and gets in a loop. docs/shared-cache.md: "commands in flight stop until
/// the server is back and its grace period is over, then finish"; "A writer whose client
/// could not reclaim its lock in that grace period fails with one `error:` line saying
/// so". So: commands were in flight across the outage (started before the kill, ended
/// after the server was back), every command succeeded or failed only as the docs allow,
/// each node went on succeeding after the reboot (counted from successes, not log lines),
/// the add held on the index lock afterwards finishes (exit 0, its name there), and every
/// add reported done (there are some, on every node after the reboot) is there with its
/// content.
pub fn server_reboots_under_load(cl: &Cluster) {
    let c = cache_with_base(cl, "t6");
    let n1 = &cl.clients[0];
    let looper = |i: usize| {
        format!(
            r#"mkdir -p /tmp/t6; rm -f /tmp/t6/* /tmp/t6.stop
setsid sh -c '
k=0
while [ ! -e /tmp/t6.stop ]; do
  k=$((k+1)); f=d{i}-$(( k % 8 + 1 ))
  t0=$EPOCHREALTIME
  sregistry --cache {c} add /host/data/$f --name t6/n{i}-$k:1 >/dev/null 2>/tmp/t6/err.add.$k; rc=$?
  t1=$EPOCHREALTIME
  echo "add t6/n{i}-$k:1 $f $rc $t0 $t1 $k" >>/tmp/t6/log
  p=$(sregistry --cache {c} get t6/base:1 2>/tmp/t6/err.get.$k); rc=$?
  [ $rc = 0 ] && {{ cmp -s "$p" /host/data/g0 || rc=100; }}
  echo "get t6/base:1 g0 $rc $t1 $EPOCHREALTIME $k" >>/tmp/t6/log
done
touch /tmp/t6/done' >/dev/null 2>&1 &"#
        )
    };
    for (i, n) in cl.clients.iter().enumerate() {
        n.sh(&looper(i + 1)).ok();
    }
    std::thread::sleep(Duration::from_secs(5));
    let lines_of = |n: &Node| {
        n.sh("wc -l </tmp/t6/log")
            .stdout
            .trim()
            .parse::<usize>()
            .unwrap_or(0)
    };
    // Commands logged with exit 0 (the log is on the node's own disk, not on NFS).
    let successes = |n: &Node| {
        n.sh("awk '$4 == 0' /tmp/t6/log | wc -l")
            .stdout
            .trim()
            .parse::<usize>()
            .unwrap_or(0)
    };
    let before: usize = cl.clients.iter().map(lines_of).sum();
    // Each node's clock (node clocks differ) just before the kill and once the server is
    // back: a command that started before the first and ended after the second was in
    // flight through the whole outage.
    let clock = |n: &Node| us(n.sh("echo $EPOCHREALTIME").ok().stdout.trim());
    // Read one node after another, each reading is moved on by the host's time between it
    // and the kill, so that a command started in between counts as in flight too (with
    // faster adds, every command running at the kill had often started after the first
    // node's reading, and none counted).
    let read: Vec<(u64, Instant)> = cl
        .clients
        .iter()
        .map(|n| (clock(n), Instant::now()))
        .collect();
    // And one add certain to be in flight through the outage, whatever the loops' timing:
    // started now on node1, paused with its file staged (no index lock held), and let go
    // a second later, when the server is dead; it logs as the loops do.
    n1.sh(&format!(
        "rm -f /tmp/t6.resume; SREGISTRY_TEST_PAUSE=add-staged SREGISTRY_TEST_RESUME=/tmp/t6.resume \
         setsid sh -c 't0=$EPOCHREALTIME; sregistry-hooks --cache {c} add /host/data/g1 \
         --name t6/inflight:1 >/dev/null 2>/tmp/t6/err.add.inflight; rc=$?; \
         echo \"add t6/inflight:1 g1 $rc $t0 $EPOCHREALTIME inflight\" >>/tmp/t6/log' \
         >/dev/null 2>&1 &"
    ))
    .ok();
    wait_for(
        n1,
        "/tmp/t6/err.add.inflight",
        "paused at",
        Duration::from_secs(60),
    );
    let t = Instant::now();
    let down_at: Vec<u64> = read
        .iter()
        .map(|(at, when)| at + t.duration_since(*when).as_micros() as u64)
        .collect();
    n1.sh("(sleep 1; touch /tmp/t6.resume) >/dev/null 2>&1 &")
        .ok();
    cl.reboot(&cl.server, Duration::from_secs(120));
    let down = t.elapsed().as_secs_f64();
    let up_at: Vec<u64> = cl.clients.iter().map(clock).collect();
    // Through the grace period, until every client has succeeded four more times.
    let at_reboot: Vec<usize> = cl.clients.iter().map(lines_of).collect();
    let ok_at_reboot: Vec<usize> = cl.clients.iter().map(successes).collect();
    let t = Instant::now();
    for (n, start) in cl.clients.iter().zip(&ok_at_reboot) {
        while successes(n) < start + 4 {
            assert!(
                t.elapsed() < Duration::from_secs(180),
                "{}: no command succeeded in 180 s after the server came back",
                n.name
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let mut lines: Vec<LoopCmd> = Vec::new();
    let mut in_flight = 0;
    for n in &cl.clients {
        n.sh("touch /tmp/t6.stop").ok();
    }
    for (i, n) in cl.clients.iter().enumerate() {
        n.sh_timeout(
            "n=0; while [ ! -e /tmp/t6/done ] && [ $n -lt 1500 ]; do sleep 0.2; n=$((n+1)); done; [ -e /tmp/t6/done ]",
            Duration::from_secs(330),
        )
        .ok();
        let log = n.sh("cat /tmp/t6/log").ok().stdout;
        for (j, l) in log.lines().enumerate() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (kind, name, file, rc) = (f[0], f[1], f[2], f[3]);
            let k = f[6];
            let err = if rc != "0" {
                n.sh(&format!("cat /tmp/t6/err.{kind}.{k}")).stdout
            } else {
                String::new()
            };
            let cmd = LoopCmd {
                node: n.name.clone(),
                kind: kind.to_string(),
                name: name.to_string(),
                file: file.to_string(),
                rc: rc.to_string(),
                t0: us(f[4]),
                t1: us(f[5]),
                after: j >= at_reboot[i],
                err,
            };
            if cmd.t0 < down_at[i] && cmd.t1 > up_at[i] {
                in_flight += 1;
            }
            lines.push(cmd);
        }
    }
    let total = lines.len();
    let failed: Vec<&LoopCmd> = lines.iter().filter(|l| l.rc != "0").collect();
    let longest = lines
        .iter()
        .map(|l| l.t1.saturating_sub(l.t0) as f64 / 1e6)
        .fold(0.0, f64::max);
    eprintln!(
        "cluster: server down and back in {down:.1} s; {total} commands ({before} before the reboot), \
         {in_flight} in flight through the outage, {} failed, the longest took {longest:.1} s",
        failed.len()
    );
    for f in &failed {
        eprintln!(
            "cluster:   failed on {}: {} {} exit {}: {}",
            f.node,
            f.kind,
            f.name,
            f.rc,
            f.err.trim()
        );
    }
    for f in &failed {
        assert!(
            f.rc != "100",
            "{}: get printed a path whose content is wrong",
            f.node
        );
        assert!(
            f.allowed_failure(),
            "{}: {} {} failed (exit {}), which docs/shared-cache.md does not allow through a \
             server reboot (commands in flight wait it out; only a writer whose lock was lost \
             fails, in one line saying so): {:?}",
            f.node,
            f.kind,
            f.name,
            f.rc,
            f.err
        );
    }
    assert!(
        in_flight > 0,
        "no command was in flight through the whole outage (longest {longest:.1} s)"
    );
    for n in &cl.clients {
        let adds_after = lines
            .iter()
            .filter(|l| l.node == n.name && l.after && l.kind == "add" && l.rc == "0")
            .count();
        assert!(
            adds_after > 0,
            "{}: no add succeeded after the server came back",
            n.name
        );
    }
    // The index lock still holds across nodes after the reboot: node1 holds it, and each
    // other node's get waits and gives up after its bound.
    hold_index_lock(n1, &c, "t6", "g7");
    let probes = par(&[&cl.clients[1], &cl.clients[2]].map(|n| {
        (
            n,
            format!("SREGISTRY_LOCK_TIMEOUT=3 sregistry --cache {c} get t6/base:1"),
        )
    }));
    n1.sh("touch /tmp/t6.resume; while pidof sregistry-hooks >/dev/null; do sleep 0.1; done")
        .ok();
    for (n, o) in [&cl.clients[1], &cl.clients[2]].iter().zip(&probes) {
        assert_eq!(
            o.code, 1,
            "{}: after the server's reboot, node1's exclusive index lock did not hold this node off: {o:?}",
            n.name
        );
    }
    // The held add, let go, finishes: exit 0 and its name holds its file.
    let held = n1.sh(&format!(
        "n=0; while [ ! -s /tmp/t6.rc ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done
         cat /tmp/t6.rc; p=$(sregistry --cache {c} get t6/held:1) && cmp -s \"$p\" /host/data/g7 && echo same"
    ));
    assert_eq!(
        held.stdout.split_whitespace().collect::<Vec<_>>(),
        ["0", "same"],
        "the add held on the index lock did not finish whole: {held:?}; its stderr: {}",
        n1.sh("cat /tmp/t6.err").stdout
    );
    // Every add reported done is there, with its content.
    let done: Vec<&LoopCmd> = lines
        .iter()
        .filter(|l| l.kind == "add" && l.rc == "0")
        .collect();
    assert!(!done.is_empty(), "no add succeeded: nothing to check");
    let script: String = done
        .iter()
        .map(|l| {
            format!(
                "p=$(sregistry --cache {c} get {n} 2>/tmp/t6.why); rc=$?\n\
                 [ $rc = 0 ] && cmp -s \"$p\" /host/data/{f} || echo \"lost: {n} (from {f}): get exit $rc $(cat /tmp/t6.why) $p\"\n",
                n = l.name,
                f = l.file
            )
        })
        .collect();
    let lost = cl.clients[2].sh(&script).ok().stdout;
    if !lost.trim().is_empty() {
        // What the cache says, for the report.
        let v = n1.sh(&format!(
            "sregistry --cache {c} verify; sregistry --cache {c} list | grep -c t6/"
        ));
        let kernel: String = cl
            .nodes()
            .map(|n| {
                let o = n.sh("dmesg | grep -i -E 'nfs|lock|grace|recover|reclaim' | tail -n 15; ls -la /export/.v4recovery 2>/dev/null");
                format!("--- {}:\n{}", n.name, o.stdout)
            })
            .collect();
        let logs: String = cl
            .clients
            .iter()
            .map(|n| format!("--- {}:\n{}", n.name, n.sh("cat /tmp/t6/log").stdout))
            .collect();
        panic!(
            "adds reported done are gone after the reboot:\n{lost}\nverify and names left:\n{}{}\nkernel messages:\n{kernel}\nloop logs (kind name file exit start end round):\n{logs}",
            v.stdout, v.stderr
        );
    }
    // Failed adds may leave what a killed add leaves (an orphan blob, a tmp file), which
    // gc clears; nothing may be corrupt or missing.
    let problems = verify_problems(n1, &c);
    assert!(
        problems.iter().all(|k| k == "orphan" || k == "stray-tmp"),
        "verify after the reboot: {problems:?}"
    );
    n1.sh(&format!("sregistry --cache {c} gc")).ok();
    verify_clean(&cl.clients[1], &c);
}

/// `SECONDS.MICROS` (busybox's `$EPOCHREALTIME`) in microseconds.
fn us(t: &str) -> u64 {
    let (s, f) = t.split_once('.').unwrap_or((t, "0"));
    s.parse::<u64>().unwrap() * 1_000_000 + format!("{f:0<6}")[..6].parse::<u64>().unwrap()
}

/// Median and 99th percentile, in milliseconds.
fn med_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99 = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1;
    (v[v.len() / 2], v[p99])
}

/// Time `count` runs of `cmd` on `node`, in milliseconds each.
fn timed(node: &Node, cmd: &str, count: usize) -> Vec<f64> {
    let o = node
        .sh_timeout(
            &format!(
                "i=0; while [ $i -lt {count} ]; do i=$((i+1)); t0=$EPOCHREALTIME; {cmd} >/dev/null || exit 1; echo $t0 $EPOCHREALTIME; done"
            ),
            Duration::from_secs(300),
        )
        .ok();
    o.stdout
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            us(b).saturating_sub(us(a)) as f64 / 1000.0
        })
        .collect()
}

/// Test 7: figures, reported and not asserted (the nodes run under emulation): `get`
/// median and p99 on each node alone and while another node adds in a loop; an add's time
/// on the NFS cache against a cache on the node's local disk.
pub fn figures(cl: &Cluster) {
    let c = cache("t7");
    let n1 = &cl.clients[0];
    n1.sh(&format!(
        "set -e; sregistry --cache {c} init; for k in 0 1 2 3 4 5 6 7; do sregistry --cache {c} add /host/data/g$k --name t7/img$k:1 >/dev/null; done"
    ))
    .ok();
    let get = format!("sregistry --cache {c} get t7/img3:1");
    // What main.rs hands the nodes: this binary when set (the release build), else the test build.
    let build = match std::env::var_os("SREGISTRY_CLUSTER_BIN") {
        Some(_) => "the build in SREGISTRY_CLUSTER_BIN",
        None => "the test build",
    };
    let mut report = vec![format!(
        "figures ({build}; kernel {}, NFSv4.2, qemu TCG, 1 vCPU and 256 MiB per node; ms):",
        cl.kernel
    )];
    for (i, n) in cl.clients.iter().enumerate() {
        let (m, p) = med_p99(timed(n, &get, 50));
        let other = &cl.clients[(i + 1) % cl.clients.len()];
        other
            .sh(&format!(
                "rm -f /tmp/t7.stop; setsid sh -c 'k=0; while [ ! -e /tmp/t7.stop ]; do k=$((k+1)); \
                 sregistry --cache {c} add /host/data/d{}-$(( k % 8 + 1 )) --name t7/load{i}-$k:1 >/dev/null 2>&1; done' >/dev/null 2>&1 &",
                i + 1
            ))
            .ok();
        std::thread::sleep(Duration::from_secs(1));
        let (ml, pl) = med_p99(timed(n, &get, 50));
        other.sh("touch /tmp/t7.stop; sleep 1").ok();
        report.push(format!(
            "  get on {}: alone median {m:.1}, p99 {p:.1}; while {} adds in a loop median {ml:.1}, p99 {pl:.1}",
            n.name, other.name
        ));
    }
    n1.sh("mkdir -p /local/cache && sregistry --cache /local/cache init")
        .ok();
    let mut adds = Vec::new();
    for (label, dir) in [("NFS", c.as_str()), ("local ext4 disk", "/local/cache")] {
        let o = n1
            .sh(&format!(
                "k=0; while [ $k -lt 12 ]; do k=$((k+1)); t0=$EPOCHREALTIME; \
                 sregistry --cache {dir} add /host/data/g$(( k % 12 )) --name t7/add$k:1 >/dev/null || exit 1; \
                 echo $t0 $EPOCHREALTIME; done"
            ))
            .ok();
        let v: Vec<f64> = o
            .stdout
            .lines()
            .map(|l| {
                let (a, b) = l.split_once(' ').unwrap();
                us(b).saturating_sub(us(a)) as f64 / 1000.0
            })
            .collect();
        let (m, p) = med_p99(v);
        adds.push(format!("{label} median {m:.1}, max {p:.1}"));
    }
    report.push(format!("  add of 1 MiB on node1: {}", adds.join("; ")));
    let text = report.join("\n");
    eprintln!("cluster: {text}");
    let _ = std::fs::write(cl.prepared.join("figures.txt"), text + "\n");
}

/// Test 6, the danger behind it: a writer whose lock the restarted server forgot. node1
/// holds the exclusive index lock, paused before its commit; the server restarts with no
/// grace period (as one that does not remember its clients would), so node1's client
/// cannot reclaim the lock, marks it lost and tells no process. node2 then takes the
/// lock and adds; node1 goes on. Its add must fail with one clear line instead of
/// committing over node2's (exit 0, node2's name gone or the index damaged: what the
/// reboot test found before writers fenced their files, `lock::fence`).
pub fn writer_whose_lock_the_server_forgot(cl: &Cluster) {
    let c = cache_with_base(cl, "t8");
    let [n1, n2, n3] = [&cl.clients[0], &cl.clients[1], &cl.clients[2]];
    hold_index_lock(n1, &c, "t8", "g7");
    let t = Instant::now();
    cl.restart(&cl.server, Duration::from_secs(120), false);
    // Until node1's client has been told: it finds out at its next lease renewal.
    std::thread::sleep(Duration::from_secs(LEASE_SECS));
    let after = n2.sh(&format!(
        "SREGISTRY_LOCK_TIMEOUT=120 sregistry --cache {c} add /host/data/g6 --name t8/after:1"
    ));
    assert_eq!(
        after.code, 0,
        "node2's add after the restart failed: {after:?}"
    );
    eprintln!(
        "cluster: server back and node2's add done {:.1} s after the kill",
        t.elapsed().as_secs_f64()
    );
    n1.sh("touch /tmp/t8.resume; n=0; while [ ! -e /tmp/t8.rc ] && [ $n -lt 600 ]; do sleep 0.2; n=$((n+1)); done")
        .ok();
    let rc = n1.sh("cat /tmp/t8.rc").stdout.trim().to_string();
    let err = n1.sh("cat /tmp/t8.err").stdout;
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("waiting for lock") && !l.starts_with("paused at"))
        .collect();
    eprintln!(
        "cluster: node1's add after losing its lock: exit {rc}: {}",
        lines.join(" / ")
    );
    for (name, file) in [("t8/after:1", "g6"), ("t8/base:1", "g0")] {
        let o = n3.sh(&format!(
            "p=$(sregistry --cache {c} get {name}) && cmp \"$p\" /host/data/{file}"
        ));
        assert_eq!(
            o.code, 0,
            "{name} is not there with its content after node1 went on: {o:?}"
        );
    }
    let kernel = n1.sh("dmesg | grep -i 'lost.*lock' | tail -n 3").stdout;
    assert!(
        kernel.contains("lost"),
        "node1's client did not report a lost lock (the test did not set up what it tests): {kernel}"
    );
    assert!(
        rc == "1" && lines.len() == 1 && lines[0].starts_with("error: "),
        "node1's add, whose lock the server forgot, did not fail with one clear error line: exit {rc:?}, stderr {err:?}"
    );
    let problems = verify_problems(n3, &c);
    assert!(
        problems.iter().all(|k| k == "orphan" || k == "stray-tmp"),
        "verify after node1's refused add: {problems:?}"
    );
    n3.sh(&format!("sregistry --cache {c} gc")).ok();
    verify_clean(n3, &c);
}

/// The `tmp/` files of an add paused on node1 (staged, under its writer lock): node2's gc
/// with `--tmp-grace 0s` and a clock a day on removes none of them and node3's verify
/// reports none, because node1's lock is held across NFS (a pid would say nothing on
/// another node); the add then commits. Killed at the same point, its files go with the
/// next gc from node2, and so does its writer lock.
pub fn live_tmp_files_across_nodes(cl: &Cluster) {
    let c = cache("t9");
    let [n1, n2, n3] = [&cl.clients[0], &cl.clients[1], &cl.clients[2]];
    n1.sh(&format!("sregistry --cache {c} init")).ok();
    let later = "SREGISTRY_NOW=$(( $(date +%s) + 86400 ))";
    let paused_add = |tag: &str, file: &str| {
        n1.sh(&format!(
            "rm -f /tmp/{tag}.resume /tmp/{tag}.rc; SREGISTRY_TEST_PAUSE=add-staged \
             SREGISTRY_TEST_RESUME=/tmp/{tag}.resume setsid sh -c 'sregistry-hooks --cache {c} \
             add /host/data/{file} --name t9/{tag}:1 >/tmp/{tag}.out 2>/tmp/{tag}.err; \
             echo $? >/tmp/{tag}.rc' >/dev/null 2>&1 &"
        ))
        .ok();
        wait_for(
            n1,
            &format!("/tmp/{tag}.err"),
            "paused at",
            Duration::from_secs(60),
        );
    };
    let tmp = |n: &Node| n.sh(&format!("ls -A {c}/v1/tmp")).ok().stdout;
    paused_add("live", "g1");
    let staged = tmp(n1);
    assert!(staged.contains("ingest-"), "nothing staged: {staged}");
    let gc = n2.sh(&format!("{later} sregistry --cache {c} gc --tmp-grace 0s"));
    assert_eq!(gc.code, 0, "{gc:?}");
    assert_eq!(tmp(n2), staged, "node2's gc removed node1's live files");
    let v = n3.sh(&format!(
        "{later} sregistry --cache {c} verify --tmp-grace 0s"
    ));
    assert_eq!(
        v.code, 0,
        "node3's verify reported node1's live files: {v:?}"
    );
    n1.sh("touch /tmp/live.resume; while [ ! -e /tmp/live.rc ]; do sleep 0.1; done")
        .ok();
    let rc = n1.sh("cat /tmp/live.rc /tmp/live.err").stdout;
    assert!(rc.starts_with('0'), "the add failed after node2's gc: {rc}");
    n2.sh(&format!(
        "cmp $(sregistry --cache {c} get t9/live:1) /host/data/g1"
    ))
    .ok();

    // Killed at the same point: its files and its lock go with the next gc elsewhere.
    paused_add("dead", "g2");
    assert!(tmp(n1).contains("ingest-"));
    n1.sh("kill -9 $(pidof sregistry-hooks); while pidof sregistry-hooks >/dev/null; do sleep 0.1; done")
        .ok();
    let gc = n2.sh(&format!("{later} sregistry --cache {c} gc --tmp-grace 1h"));
    assert_eq!(gc.code, 0, "{gc:?}");
    assert_eq!(tmp(n3).trim(), "", "a killed add's files outlived gc");
    let locks = n3
        .sh(&format!("ls -A {c}/v1/locks | grep '^writer-' || true"))
        .stdout;
    assert_eq!(locks.trim(), "", "dead writers' locks outlived gc");
    verify_clean(n3, &c);
}

/// A file renamed over a blob on one node is refused by `get` on every node: at once on
/// the node that renamed it and on one whose caches were dropped, and on a node that had
/// just read the name once its NFS client looks the name up again; a re-add from a third
/// node restores it, and every node answers at once (none refuses the file the re-add put
/// there from what it cached of the name), with a record made on another node.
pub fn replaced_blob_across_nodes(cl: &Cluster) {
    let test = "t10";
    let c = cache_with_base(cl, test);
    let [n1, n2, n3] = [&cl.clients[0], &cl.clients[1], &cl.clients[2]];
    let get = format!("sregistry --cache {c} get {test}/base:1");
    let path = n2.sh(&get).ok().stdout.trim().to_string();
    n3.sh(&format!("cmp $({get}) /host/data/g0")).ok();
    // Node2 puts a file of the same size and other content in its place by a rename.
    n2.sh(&format!(
        "cp {path} {path}.swap && printf X | dd of={path}.swap bs=1 conv=notrunc 2>/dev/null \
         && mv -f {path}.swap {path}"
    ))
    .ok();
    let refused = |n: &Node| {
        let o = n.sh(&get);
        o.code == 4 && o.stderr.contains("is not the file sregistry put there")
    };
    assert!(
        refused(n2),
        "node2's get handed out the file it renamed over the blob"
    );
    n1.sh("sync; echo 3 > /proc/sys/vm/drop_caches").ok();
    assert!(refused(n1), "node1's get handed out a replaced file");
    // Node3 read the name a moment ago: its client may answer a `stat` from its caches
    // (the attribute and directory cache times) before it looks the name up again.
    let t = Instant::now();
    while !refused(n3) {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "node3 still hands out the replaced file after 90 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "cluster: node3 refused the replaced blob after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    n3.sh(&format!(
        "sregistry --cache {c} add /host/data/g0 --name {test}/base:1"
    ))
    .ok();
    for n in [n1, n2, n3] {
        n.sh(&format!("cmp $({get}) /host/data/g0")).ok();
    }
    verify_clean(n1, &c);
}

/// Danger: a job on a node that fails, or reads one version's index with another's file,
/// while the site's admin publishes the tier on the NFS server (issue 23: a tier on an NFS
/// export, read-only on the nodes). The server publishes versions of a tier into its
/// export (its own disk); each client reads it over NFS through a read-only bind mount,
/// listing both names and reading both files in a loop while the versions change. Every
/// command succeeds, the two files of one `list` are in one version's directory and hold
/// the same content, and every client saw more than one version.
pub fn tier_published_over_nfs(cl: &Cluster) {
    let publish = |v: u32| {
        format!(
            "set -e; S=/export/t10src; printf 'version {v}\\n' >/tmp/p.img
/host/bin/sregistry --cache $S add --force /tmp/p.img --name lab/x:1 >/dev/null
/host/bin/sregistry --cache $S add --force /tmp/p.img --name lab/y:1 >/dev/null
/host/bin/sregistry tier publish --keep 1h $S /export/t10tier >/dev/null"
        )
    };
    cl.server.sh(&publish(0)).ok();
    let secs = 40;
    let reader = format!(
        r#"set -u; mkdir -p /t10 /tmp/t10w
mount --bind /mnt/nfs/t10tier /t10 && mount -o remount,bind,ro /t10 || {{ echo "no read-only bind mount" >&2; exit 9; }}
end=$(( $(date +%s) + {secs} ))
while [ "$(date +%s)" -lt "$end" ]; do
  l=$(sregistry --cache /tmp/t10w --tier /t10 list --json 2>&1) || {{ echo "FAIL list: $l"; continue; }}
  set -- $(printf '%s' "$l" | grep -o '"path": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/')
  [ "$#" -eq 2 ] || {{ echo "FAIL paths: $l"; continue; }}
  g=$(sregistry --cache /tmp/t10w --tier /t10 get lab/x:1 2>&1) || {{ echo "FAIL get: $g"; continue; }}
  echo "R $1 $2 $(cat "$1" | tr ' ' _) $(cat "$2" | tr ' ' _)"
done
umount /t10 || true"#
    );
    let (outs, published) = std::thread::scope(|s| {
        let readers: Vec<_> = cl
            .clients
            .iter()
            .map(|n| {
                let r = reader.clone();
                s.spawn(move || n.sh_timeout(&r, Duration::from_secs(secs + 120)))
            })
            .collect();
        let t0 = Instant::now();
        let mut v = 0;
        while t0.elapsed() < Duration::from_secs(secs - 8) {
            v += 1;
            cl.server.sh(&publish(v)).ok();
            std::thread::sleep(Duration::from_millis(700));
        }
        let outs: Vec<Out> = readers.into_iter().map(|h| h.join().unwrap()).collect();
        (outs, v)
    });
    assert!(published >= 5, "only {published} versions published");
    let version_dir = |p: &str| {
        let (before, after) = p.split_once("/versions/").unwrap_or((p, ""));
        format!(
            "{before}/versions/{}",
            after.split('/').next().unwrap_or("")
        )
    };
    for (n, o) in cl.clients.iter().zip(&outs) {
        assert_eq!(o.code, 0, "{}: {}", n.name, o.stderr);
        let mut seen = BTreeSet::new();
        let mut reads = 0;
        for l in o.stdout.lines() {
            assert!(!l.starts_with("FAIL"), "{}: {l}\n{}", n.name, o.stdout);
            let f: Vec<&str> = l.split(' ').collect();
            if f.first() != Some(&"R") {
                continue;
            }
            assert_eq!(f.len(), 5, "{}: {l}", n.name);
            assert!(
                f[1].contains("/versions/"),
                "{}: not a published version: {l}",
                n.name
            );
            assert_eq!(
                version_dir(f[1]),
                version_dir(f[2]),
                "{}: a mix of versions: {l}",
                n.name
            );
            assert_eq!(f[3], f[4], "{}: two contents in one version: {l}", n.name);
            seen.insert(f[3].to_string());
            reads += 1;
        }
        assert!(reads >= 5, "{}: only {reads} reads\n{}", n.name, o.stderr);
        assert!(seen.len() > 1, "{}: saw one version only: {seen:?}", n.name);
    }
}

//! `--module=mpich` through Slurm: six MPICH ranks on the three test nodes,
//! each in its node's container of the Debian MPICH image, each loading the
//! HOST's libmpich (device and inode in /proc/self/maps), and the image's
//! own copy with `--module=none`.

mod support;

use support::{ok, slurm};

const PROBE: &str = r#"#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int rank; char host[256], line[4096], dev[32] = "?"; unsigned long ino = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    gethostname(host, sizeof host);
    FILE *f = fopen("/proc/self/maps", "r");
    while (fgets(line, sizeof line, f))
        if (strstr(line, "libmpich.so.12")) { sscanf(line, "%*s %*s %*s %31s %lu", dev, &ino); break; }
    printf("rank %d %s %s %lu\n", rank, host, dev, ino);
    MPI_Finalize();
    return 0;
}
"#;

#[test]
fn six_ranks_on_three_nodes_load_the_hosts_mpich() {
    let tb = slurm();
    let dir = tb.user_tempdir("inject-slurm");
    ok(&tb.user(&format!(
        r#"set -e; cd {dir}
        SSL_CERT_FILE={ca} {shoal} pull 127.0.0.1:5443/shoal/debian-mpich:12 >&2
        cat > probe.c <<'EOF'
{PROBE}EOF
        mpicc -O1 -o probe probe.c"#,
        dir = dir.display(),
        ca = tb.ca_cert.display(),
        shoal = tb.shoal().display(),
    )));
    let host = ok(&tb.user("stat -L -c '%Hd %Ld %i' /usr/lib/x86_64-linux-gnu/libmpich.so.12"));
    let h: Vec<u64> = host.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let host_dev = format!("{:02x}:{:02x}", h[0], h[1]);

    let run = |module: &str| {
        ok(&tb.user(&format!(
            "cd {} && srun -N3 -n6 --mpi=pmi2 --image=127.0.0.1:5443/shoal/debian-mpich:12 --module={module} ./probe",
            dir.display()
        )))
    };
    let ranks = |out: &str| -> Vec<(String, String, u64)> {
        out.lines()
            .filter(|l| l.starts_with("rank "))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[2].to_string(), f[3].to_string(), f[4].parse().unwrap())
            })
            .collect()
    };

    let out = run("mpich");
    let r = ranks(&out);
    assert_eq!(r.len(), 6, "{out}");
    let mut hosts: Vec<&str> = r.iter().map(|(h, _, _)| h.as_str()).collect();
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts, ["n1", "n2", "n3"], "{out}");
    for (_, dev, ino) in &r {
        assert_eq!((dev.as_str(), *ino), (host_dev.as_str(), h[2]), "every rank maps the host's file:\n{out}");
    }

    let out = run("none");
    let r = ranks(&out);
    assert_eq!(r.len(), 6, "{out}");
    assert!(r.iter().all(|(_, dev, _)| *dev != host_dev), "the image's own copy:\n{out}");
}

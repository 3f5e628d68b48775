/* Escape probes run inside test containers (the test image has only busybox).
 * Each mode tries one thing a contained process must not be able to do and prints
 * "allowed" or "refused ERRNO_NAME"; the tests decide what is expected.
 * Built statically by tests/test_escape.py with the host's gcc. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static int report(long rc) {
    if (rc < 0) {
        printf("refused %s\n", strerrorname_np(errno) ? strerrorname_np(errno) : "?");
        return 1;
    }
    printf("allowed\n");
    return 0;
}

static long find_key(const char *desc) {
    return syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, "user", desc, 0);
}

static long add_key(const char *desc) {
    return syscall(SYS_add_key, "user", desc, "x", 1, KEY_SPEC_SESSION_KEYRING);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: probe MODE [ARGS]\n"); return 2; }
    const char *m = argv[1];
    if (!strcmp(m, "keyctl")) return report(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
    if (!strcmp(m, "bpf")) {
        union bpf_attr a; memset(&a, 0, sizeof a);
        a.map_type = BPF_MAP_TYPE_ARRAY; a.key_size = 4; a.value_size = 4; a.max_entries = 1;
        return report(syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof a));
    }
    if (!strcmp(m, "perf")) {
        struct perf_event_attr a; memset(&a, 0, sizeof a);
        a.type = PERF_TYPE_SOFTWARE; a.size = sizeof a; a.config = PERF_COUNT_SW_CPU_CLOCK;
        a.exclude_kernel = 1; a.exclude_hv = 1;
        return report(syscall(SYS_perf_event_open, &a, 0, -1, -1, 0));
    }
    if (!strcmp(m, "userfaultfd")) return report(syscall(SYS_userfaultfd, O_CLOEXEC));
    if (!strcmp(m, "io_uring")) {
        struct io_uring_params p; memset(&p, 0, sizeof p);
        return report(syscall(SYS_io_uring_setup, 4, &p));
    }
    if (!strcmp(m, "unshare-user")) return report(unshare(CLONE_NEWUSER));
    if (!strcmp(m, "unshare-mnt")) return report(unshare(CLONE_NEWNS));
    if (!strcmp(m, "mount-tmpfs")) return report(mount("x", "/tmp", "tmpfs", 0, NULL));
    if (!strcmp(m, "umount")) return report(umount2(argv[2], MNT_DETACH));
    if (!strcmp(m, "mknod")) return report(mknod("/tmp/probe-null", S_IFCHR | 0666, makedev(1, 3)));
    if (!strcmp(m, "ptrace")) return report(ptrace(PTRACE_ATTACH, atoi(argv[2]), 0, 0));
    if (!strcmp(m, "open")) return report(open(argv[2], O_RDONLY));
    /* Keyrings: "keys" runs inside: is the host's key visible?  then plants one.
       "hostkeys CMD..." runs on the host: adds a key, runs CMD, then looks for the planted one. */
    if (!strcmp(m, "keys")) {
        printf("host key %s\n", find_key("rootless-host-secret") < 0 ? "hidden" : "visible");
        printf("plant %s\n", add_key("rootless-planted") < 0 ? "refused" : "done");
        return 0;
    }
    if (!strcmp(m, "hostkeys")) {
        if (add_key("rootless-host-secret") < 0) { perror("add_key"); return 2; }
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) { execvp(argv[2], argv + 2); perror("exec"); _exit(127); }
        int st; waitpid(pid, &st, 0);
        printf("planted key %s on the host\n", find_key("rootless-planted") < 0 ? "absent" : "present");
        return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
    }
    fprintf(stderr, "unknown mode %s\n", m);
    return 2;
}

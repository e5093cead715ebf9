/*
 * pmgcm.c - the pmgcm admin tool. Thin: parses the command line, asks the
 * local pmgclusterd over its control socket (protocol: membership.h),
 * prints the answer.
 *
 * The commands and options are the shared table's (membership.h,
 * pmm_ctl_cmds[] and pmm_cli_opts[]): getopt_long, the per-command option
 * check, usage and `help [CMD]` are generated from it, and cli_cmds[] at
 * the end of this file holds pmgcm's function for each row. Adding a
 * command: read the comment above pmm_ctl_id in membership.h.
 *
 * ---- usage (for the README) -------------------------------------------------
 *
 *   pmgcm [--socket PATH] [--output-format text|json|json-pretty] COMMAND [ARGS]
 *   pmgcm --host HOST[:PORT] [--output-format text|json|json-pretty] status
 *
 *   pmgcm create [--password-file FILE]
 *       Create a cluster: this node becomes its master, cid 1. Asks for the
 *       join password twice (no echo) unless --password-file is given.
 *       Prints the node's certificate fingerprint, which joining nodes pin.
 *
 *   pmgcm join <master_ip> [--fingerprint FP] [--password-file FILE] [--yes]
 *              [--no-wait]
 *       First asks the daemon whether this node is in a cluster already
 *       (then it says so and exits 1, before any prompt). Join the cluster whose master is at <master_ip> (IPv4 or IPv6; add
 *       the port, 10.0.0.1:7957 or [fd00::1]:7957, when the master's node
 *       API is not on the default port 7947 - join-cmd prints it so).
 *       Without --fingerprint, the master's certificate fingerprint is
 *       fetched and shown, and you confirm it by typing "yes" (--yes
 *       accepts it without asking, for scripts). Then asks for the join
 *       password (no echo) unless --password-file is given. Prints the
 *       cid the master assigned. With a replicated database, then waits
 *       (progress bar on a terminal) until the node has loaded the
 *       master's data and caught up; a schema mismatch is an error (exit
 *       1, nothing changed). --no-wait returns once the node is a member.
 *
 *   pmgcm join-cmd
 *       Print the exact `pmgcm join <ip> --fingerprint <fp>` line to run on
 *       a new node.
 *
 *   pmgcm delete <cid> [--purge]
 *       Remove node <cid> (1..65535) from the cluster (on the master). The
 *       gossip key is rotated, so the deleted node is shut out.
 *
 *   pmgcm promote [--force] [--accept-data-loss]
 *       Make this node the master under a new epoch. Refused while the
 *       current master is alive, unless --force. Refused, with and without
 *       --force, while this node's data is incomplete (its snapshot not
 *       loaded, or behind a live node): the refusal names the live node
 *       with the most advanced data. --accept-data-loss (disaster recovery)
 *       promotes anyway; it prints what the cluster loses, and the daemon
 *       logs it and records it (pmgcm backups).
 *
 *   pmgcm backups [list]
 *   pmgcm backups clear ID|divergence
 *       The data this node's store kept instead of destroying it: backup
 *       schemas of rows a resync replaced, notes of forced promotes, and
 *       the number of pmgcm.divergence records. clear ID drops backup ID
 *       (its schema); clear divergence deletes the divergence records.
 *
 *   pmgcm files publish [--confirm]
 *       On the master: publish the mirrored files it holds for an admin's
 *       confirmation (a directory that drops most of the published
 *       files, or a master that does not hold the published manifest).
 *       Without --confirm it only says what is held (exit 1).
 *
 *   pmgcm sync [--master-ip IP]
 *       Fetch the cluster configuration now; --master-ip (or PMG's
 *       spelling --master_ip) points this node at a new master.
 *
 *   pmgcm status
 *       Every cluster node as this node sees it:
 *       NAME(CID) IPADDRESS ROLE STATE UPTIME LOAD MEM DISK, where STATE is
 *       A alive, S syncing, ? suspect, D dead, L left the cluster.
 *
 *   pmgcm --host HOST[:PORT] status
 *       The same, asked over HTTP from a remote node's status port
 *       (GET /status; PORT defaults to 7948; HOST is an IPv4 address,
 *       [IPv6] or a name), for a workstation without a daemon. Only
 *       status works this way: the other commands change a node and run
 *       on it. Gives up after 10 s.
 *
 *   pmgcm drain
 *       Take this node out of load balancers' rotation without leaving
 *       the cluster: the status port's /readyz answers 503 ("draining")
 *       and the agent port says "drain". Kept across daemon restarts
 *       (data_dir/draining) until `pmgcm undrain`.
 *
 *   pmgcm undrain
 *       Put it back: ready again (if nothing else is wrong).
 *
 *   pmgcm update-fingerprints [--yes]
 *       On the master: refresh its own certificate fingerprint in the
 *       cluster config and ask every other node which certificate it
 *       presents; a changed one is shown and pinned only once confirmed
 *       (typed yes on the terminal, or --yes). Exit 1 while a change is
 *       not pinned or a node could not be checked.
 *
 *   pmgcm keygen
 *       Print a new random gossip key (for key_file).
 *
 *   pmgcm help [COMMAND]
 *       List the commands, or one command's synopsis and options (also
 *       `pmgcm COMMAND --help`).
 *
 *   Options valid with every command (before or after it):
 *     --socket PATH         pmgclusterd's control socket (default
 *                           $PMGCM_SOCKET, else /run/pmgcm/pmgcm.sock)
 *     --host HOST[:PORT]    status only: ask that node's status port
 *     --token-file FILE     with --host: send the token on FILE's first
 *                           line ("Authorization: Bearer", for a status
 *                           port with status_access = token); the file
 *                           must not be readable by everyone
 *     --output-format text|json|json-pretty
 *                           json prints the daemon's answer object, one
 *                           JSON document on stdout, also when it is an
 *                           error ({"ok":false,"error":"..."}); status
 *                           prints the members array.
 *
 *   A password file holds the password on its first line (a trailing
 *   newline is ignored; 1..1024 bytes of UTF-8, no control characters) and
 *   must not be readable by everyone (chmod 600).
 *
 *   Options are parsed with getopt_long and never abbreviated.
 *
 *   Exit status: 0 success; 1 the daemon refused or failed (its error is
 *   printed as "pmgcm: <error>"), or it could not be reached; 2 usage error
 *   (nothing was sent to the daemon).
 *
 * -----------------------------------------------------------------------------
 */
#include "cli/cli.h"
#include "membership/membership.h"
#include "net/net.h"
#include "store/store.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#define IO_TIMEOUT_S 10 /* status: the daemon answers from memory */
#define HTTP_DEFAULT_PORT "7948" /* PMM_DEFAULT_STATUS_PORT */
/* commands that go to the network: a little longer than the daemon's own
 * cap, so its "timed out" arrives first */
#define LONG_TIMEOUT_S (PMM_CTL_PENDING_MS / 1000 + 10)

#define HELP_WIDTH 79 /* help never wraps in an 80-column terminal */

/* Prints text at column `col` (the cursor is there already, at `at`),
 * continuing at column `indent` on new lines, words wrapped before
 * HELP_WIDTH. */
static void wrap(FILE *f, size_t at, size_t indent, const char *text)
{
    const char *w = text;

    while (*w != '\0') {
        size_t n = strcspn(w, " ");
        if (at > indent && at + 1 + n > HELP_WIDTH) {
            fprintf(f, "\n%*s", (int)indent, "");
            at = indent;
        } else if (w != text) {
            fputc(' ', f);
            at++;
        }
        fprintf(f, "%.*s", (int)n, w);
        at += n;
        w += n;
        while (*w == ' ')
            w++;
    }
    fputc('\n', f);
}

/* "--password-file FILE", "-h, --help" */
static void opt_spelling(char *buf, size_t cap, int id)
{
    const pmm_cli_opt *o = &pmm_cli_opts[id];
    int n = 0;

    if (o->short_name)
        n = snprintf(buf, cap, "-%c, ", o->short_name);
    snprintf(buf + n, cap - (size_t)n, "--%s%s%s", o->name,
             o->metavar ? " " : "", o->metavar ? o->metavar : "");
}

static void print_opt(FILE *f, int id)
{
    char sp[64];

    opt_spelling(sp, sizeof(sp), id);
    /* "  " + 24 columns, then the help; a longer spelling gets its own
     * line */
    if (strlen(sp) <= 24) {
        fprintf(f, "  %-24s  ", sp);
    } else {
        fprintf(f, "  %s\n%28s", sp, "");
    }
    wrap(f, 28, 28, pmm_cli_opts[id].help);
}

/* "usage: pmgcm join <master_ip> [--fingerprint FP] ..." wrapped */
static void print_synopsis(FILE *f, const pmm_ctl_cmd *c)
{
    char head[64];
    int n = snprintf(head, sizeof(head), "usage: pmgcm %s", c->name);

    fputs(head, f);
    if (c->synopsis[0] != '\0') {
        fputc(' ', f);
        wrap(f, (size_t)n + 1, (size_t)n + 1, c->synopsis);
    } else {
        fputc('\n', f);
    }
}

/* `pmgcm help`, --help: every command of the table, one line each */
static void usage(FILE *f)
{
    fprintf(f,
            "usage: pmgcm [OPTIONS] COMMAND [ARGS]\n"
            "       pmgcm --host HOST[:PORT] [--output-format FORMAT] "
            "status\n"
            "       pmgcm help [COMMAND]\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; i < PMM_CMD_COUNT; i++) {
        const pmm_ctl_cmd *c = &pmm_ctl_cmds[i];
        if (c->name == NULL)
            continue;
        if (strlen(c->name) <= 10)
            fprintf(f, "  %-10s  %s\n", c->name, c->help);
        else
            fprintf(f, "  %s\n  %-10s  %s\n", c->name, "", c->help);
    }
    fprintf(f, "\noptions (before or after the command):\n");
    for (int id = 0; id < PMM_OPT_COUNT; id++)
        if (PMM_OPTS_GLOBAL & PMM_OPT(id))
            print_opt(f, id);
    fprintf(f,
            "\n"
            "`pmgcm help COMMAND` shows a command's arguments and options; "
            "pmgcm(1) has\n"
            "the details. A password file holds the password on its first "
            "line and\n"
            "must not be readable by everyone.\n"
            "exit status: 0 ok, 1 failed or refused, 2 usage error.\n");
}

/* `pmgcm help CMD`, `pmgcm CMD --help` */
static void usage_cmd(FILE *f, const pmm_ctl_cmd *c)
{
    print_synopsis(f, c);
    fprintf(f, "\n  %s\n  runs on: %s\n", c->help, pmm_ctl_who_str(c->who));
    if (c->opts != 0) {
        fprintf(f, "\noptions:\n");
        for (int id = 0; id < PMM_OPT_COUNT; id++)
            if (c->opts & PMM_OPT(id))
                print_opt(f, id);
    }
    {
        char all[256] = "and the options of every command:";
        size_t o = strlen(all);
        for (int id = 0, first = 1; id < PMM_OPT_COUNT; id++)
            if (PMM_OPTS_GLOBAL & PMM_OPT(id)) {
                o += (size_t)snprintf(all + o, sizeof(all) - o, "%s --%s",
                                      first ? "" : ",",
                                      pmm_cli_opts[id].name);
                first = 0;
            }
        fputc('\n', f);
        wrap(f, 0, 2, all);
    }
    fprintf(f, "(pmgcm help lists the commands; pmgcm(1) has the "
               "details)\n");
}

/* the command a usage error is about, when known (its synopsis is shown) */
static const pmm_ctl_cmd *usage_for;

static int usage_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "pmgcm: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    if (usage_for != NULL)
        print_synopsis(stderr, usage_for);
    else
        fprintf(stderr, "usage: pmgcm [OPTIONS] COMMAND [ARGS]\n");
    fprintf(stderr, "(pmgcm help%s%s shows more)\n", usage_for ? " " : "",
            usage_for ? usage_for->name : "");
    return 2;
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int fail(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "pmgcm: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    return 1;
}

static int write_out(const char *s, size_t n)
{
    if (fwrite(s, 1, n, stdout) != n || fflush(stdout) != 0) {
        fprintf(stderr, "pmgcm: cannot write output: %s\n", strerror(errno));
        return 1;
    }
    return 0;
}

/* --output-format json-pretty (Proxmox's name): JSON answers indented */
static bool json_pretty;

/* Writes one JSON document and a newline: as it is, or indented with
 * --output-format json-pretty. */
static int write_json(const char *s, size_t n)
{
    pmm_buf b;
    int rc;

    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' '))
        n--;
    if (!json_pretty)
        return write_out(s, n) != 0 || write_out("\n", 1) != 0;
    pmm_buf_init(&b, 4 * n + 4096);
    rc = pmm_json_indent(&b, s, n);
    if (rc != 0) {
        pmm_buf_wipe(&b);
        fprintf(stderr, "pmgcm: cannot format output: %s\n",
                rc == -EINVAL ? "not JSON" : strerror(-rc));
        return 1;
    }
    rc = write_out(b.p, b.len);
    pmm_buf_wipe(&b); /* keygen's key; frees b */
    return rc;
}

/* Copies s for a terminal: control and non-ASCII bytes become '?'. */
#define term_safe(dst, cap, s) pmm_printable(dst, cap, s)

/* An argument as it may be echoed in a message: control and non-ASCII
 * bytes become '?', and it is cut at ECHO_MAX characters with "..." (a
 * 100 KB argument is not printed back). Four buffers in rotation, so one
 * message can show several. */
#define ECHO_MAX 64
static const char *shown(const char *s)
{
    static char bufs[4][ECHO_MAX + 4];
    static unsigned next;
    char *b = bufs[next++ % 4];
    size_t i = 0;

    for (; s[i] != '\0' && i < ECHO_MAX; i++) {
        unsigned char c = (unsigned char)s[i];
        b[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    if (s[i] != '\0')
        memcpy(b + i, "...", 4);
    else
        b[i] = '\0';
    return b;
}

static bool ip_ok(const char *s)
{
    unsigned char a[16];

    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

/* A master address for join: IP, IP:PORT or [IPv6]:PORT. */
static bool target_ok(const char *s)
{
    gsp_addr a;

    return strlen(s) <= 64 && gsp_addr_parse(&a, s, 1) == 0;
}

/* A certificate fingerprint as pmgcm prints it (32 hex pairs joined by
 * ':') or as 64 hex digits: the form is checked here, before any prompt
 * or network trip (net/net.h pmm_tls_fp_parse). */
static bool fingerprint_ok(const char *s)
{
    pmm_tls_fp fp;

    return pmm_tls_fp_parse(&fp, s) == 0;
}

/* Why a password is unacceptable, or NULL. */
static const char *password_problem(const char *pw, size_t n)
{
    if (n == 0)
        return "the password is empty";
    if (n > PMM_CTL_PASSWORD_MAX)
        return "the password is longer than 1024 bytes";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)pw[i] < 0x20 || pw[i] == 0x7f)
            return "the password contains a control character";
    if (!pmm_utf8_valid(pw, n))
        return "the password is not valid UTF-8";
    return NULL;
}

/* ---- JSON output ------------------------------------------------------------- */

/* v (reference taken; NULL: a constructor failed) as compact JSON into b
 * (initialised by the caller). 0, or 1 with the error printed. */
static int json_text(pmm_buf *b, json_t *v)
{
    int rc = pmm_json_put(b, v);

    if (rc != 0)
        return fail("cannot format output: %s", strerror(-rc));
    return 0;
}

/* v (reference taken) written with write_json. 0 or 1. */
static int write_jvalue(json_t *v)
{
    pmm_buf b;
    int rc;

    pmm_buf_init(&b, PMM_CTL_REPLY_MAX);
    rc = json_text(&b, v);
    if (rc == 0)
        rc = write_json(b.p, b.len);
    pmm_buf_free(&b);
    return rc;
}

/* ---- keygen ---------------------------------------------------------------- */

static int cmd_keygen(bool json)
{
    uint8_t key[GSP_KEY_LEN];
    char out[2 * GSP_KEY_LEN + 16];
    size_t o = 0;
    int rc = gsp_random(key, sizeof(key));

    if (rc != 0)
        return fail("cannot generate a key: %s", gsp_strerror(rc));
    pmm_hex_encode(key, sizeof(key), out, false);
    o = 2 * sizeof(key);
    explicit_bzero(key, sizeof(key));
    if (json) {
        /* {"key":"..."}: the buffer is reserved once (never moved) and
         * wiped; jansson's copy is zeroed when freed (common/json.c) */
        pmm_buf b;
        pmm_buf_init(&b, 256);
        pmm_buf_reserve(&b, 128);
        rc = json_text(&b, json_pack("{s:o}", "key", pmm_jstr(out, o)));
        explicit_bzero(out, sizeof(out));
        if (rc == 0)
            rc = write_json(b.p, b.len);
        pmm_buf_wipe(&b);
        return rc;
    }
    out[o++] = '\n';
    rc = write_out(out, o);
    explicit_bzero(out, sizeof(out));
    return rc;
}

/* ---- the terminal ------------------------------------------------------------ */

static int tty_fd = -1;
static volatile sig_atomic_t tty_echo_off;
static struct termios tty_saved;

static void tty_restore_on_signal(int sig)
{
    if (tty_echo_off)
        tcsetattr(tty_fd, TCSAFLUSH, &tty_saved);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Opens /dev/tty once; false when there is no terminal. */
static bool tty_open(void)
{
    if (tty_fd >= 0)
        return true;
    tty_fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    return tty_fd >= 0;
}

static void tty_puts(const char *s)
{
    size_t n = strlen(s), off = 0;

    while (off < n) {
        ssize_t w = write(tty_fd, s + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

/* Reads one line from the terminal into buf (NUL-terminated, without the
 * newline). 0, or -E2BIG (longer than cap - 1: the rest of the line is
 * consumed), -ENODATA (end of input before anything), -EIO. */
static int tty_read_line(char *buf, size_t cap, size_t *len)
{
    size_t n = 0;
    bool over = false, any = false;

    for (;;) {
        char c;
        ssize_t r = read(tty_fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -EIO;
        if (r == 0) {
            if (!any)
                return -ENODATA;
            break;
        }
        any = true;
        if (c == '\n')
            break;
        if (n + 1 < cap)
            buf[n++] = c;
        else
            over = true;
    }
    buf[n] = '\0';
    *len = n;
    return over ? -E2BIG : 0;
}

/* Asks for a secret with echo off. 0 or 1 (error printed). */
static int tty_ask_secret(const char *prompt, char *buf, size_t cap,
                          size_t *len)
{
    struct termios t;
    struct sigaction sa, old[4];
    static const int sigs[4] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    int rc;

    if (tcgetattr(tty_fd, &tty_saved) != 0)
        return fail("cannot use the terminal: %s", strerror(errno));
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = tty_restore_on_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 4; i++)
        sigaction(sigs[i], &sa, &old[i]);
    t = tty_saved;
    t.c_lflag &= ~(tcflag_t)ECHO;
    t.c_lflag |= ECHONL;
    /* echo off before the prompt: nothing typed after it is ever shown
     * (TCSAFLUSH drops what was typed before) */
    tty_echo_off = 1;
    if (tcsetattr(tty_fd, TCSAFLUSH, &t) != 0) {
        rc = errno;
        tty_echo_off = 0;
        for (int i = 0; i < 4; i++)
            sigaction(sigs[i], &old[i], NULL);
        return fail("cannot turn off echo on the terminal: %s",
                    strerror(rc));
    }
    tty_puts(prompt);
    rc = tty_read_line(buf, cap, len);
    tcsetattr(tty_fd, TCSAFLUSH, &tty_saved);
    tty_echo_off = 0;
    for (int i = 0; i < 4; i++)
        sigaction(sigs[i], &old[i], NULL);
    if (rc == -ENODATA) {
        tty_puts("\n");
        return fail("no password given");
    }
    if (rc == -E2BIG)
        return fail("the password is longer than %d bytes",
                    PMM_CTL_PASSWORD_MAX);
    if (rc != 0)
        return fail("cannot read from the terminal");
    return 0;
}

/* ---- passwords --------------------------------------------------------------- */

/* The first line of a secret file (a password, a token) into buf: a
 * regular file not readable by everyone, read up to its first newline or
 * cap bytes. *line: the line's length without "\n" or "\r\n"; cap when
 * no newline came in cap bytes (too long). `what` names the file in the
 * messages ("password file"). 0, or 1 with the message printed (buf
 * wiped). */
static int secret_first_line(const char *path, const char *what, char *buf,
                             size_t cap, size_t *line)
{
    size_t n = 0;
    struct stat st;
    char *nl;
    int fd = open(path, O_RDONLY | O_NOCTTY | O_CLOEXEC);

    if (fd < 0)
        return fail("cannot open %s %s: %s", what, shown(path),
                    strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail("%s %s is not a regular file", what, shown(path));
    }
    if (st.st_mode & S_IROTH) {
        close(fd);
        return fail("%s %s is readable by everyone (mode %04o): refusing to"
                    " use it; run chmod o-r on it", what, shown(path),
                    (unsigned)(st.st_mode & 07777));
    }
    while (n < cap) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            explicit_bzero(buf, cap);
            return fail("cannot read %s %s: %s", what, shown(path),
                        strerror(e));
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (memchr(buf, '\n', n) != NULL)
            break;
    }
    close(fd);
    nl = memchr(buf, '\n', n);
    *line = nl != NULL ? (size_t)(nl - buf) : n;
    if (*line > 0 && buf[*line - 1] == '\r')
        (*line)--;
    if (nl == NULL && n == cap)
        *line = cap; /* no end in sight: too long */
    return 0;
}

/* buf must hold PMM_CTL_PASSWORD_MAX + 1 bytes. 0 or 1 (error printed). */
static int password_from_file(const char *path, char *pw, size_t *len)
{
    char raw[PMM_CTL_PASSWORD_MAX + 3]; /* password, "\r\n", one more */
    size_t line;
    const char *why;

    if (secret_first_line(path, "password file", raw, sizeof(raw), &line))
        return 1;
    why = password_problem(raw, line);
    if (why != NULL) {
        explicit_bzero(raw, sizeof(raw));
        return fail("password file %s: %s", shown(path),
                    line == 0 ? "the first line (the password) is empty"
                              : why);
    }
    memcpy(pw, raw, line);
    pw[line] = '\0';
    *len = line;
    explicit_bzero(raw, sizeof(raw));
    return 0;
}

/* A new cluster's password (create): at least PMM_CREATE_PASSWORD_MIN
 * characters. 0, or 1 with the message printed. */
static int password_short(const char *pw, size_t n)
{
    size_t chars = pmm_utf8_chars(pw, n);

    if (chars >= PMM_CREATE_PASSWORD_MIN)
        return 0;
    return fail("the join password is too short: %zu character%s, at least "
                "%d are needed (anyone who reaches the node API can try "
                "passwords; a passphrase of a few words is fine)", chars,
                chars == 1 ? "" : "s", PMM_CREATE_PASSWORD_MIN);
}

/* From the file, or asked on the terminal (twice when confirm: a new
 * password, which must be long enough). */
static int get_password(const char *file, bool confirm, char *pw,
                        size_t *len)
{
    char again[PMM_CTL_PASSWORD_MAX + 1];
    size_t alen;
    const char *why;
    int rc;

    if (file != NULL) {
        rc = password_from_file(file, pw, len);
        if (rc == 0 && confirm && (rc = password_short(pw, *len)) != 0)
            explicit_bzero(pw, PMM_CTL_PASSWORD_MAX + 1);
        return rc;
    }
    if (!tty_open())
        return fail("no terminal: use --password-file");
    if (tty_ask_secret("Enter join password: ", pw,
                       PMM_CTL_PASSWORD_MAX + 1, len) != 0)
        return 1;
    why = password_problem(pw, *len);
    if (why != NULL) {
        explicit_bzero(pw, PMM_CTL_PASSWORD_MAX + 1);
        return fail("%s", why);
    }
    if (!confirm)
        return 0;
    if ((rc = password_short(pw, *len)) != 0) {
        explicit_bzero(pw, PMM_CTL_PASSWORD_MAX + 1);
        return rc;
    }
    rc = tty_ask_secret("Confirm join password: ", again, sizeof(again),
                        &alen);
    if (rc == 0 && (alen != *len || memcmp(again, pw, alen) != 0))
        rc = fail("passwords do not match");
    explicit_bzero(again, sizeof(again));
    if (rc != 0)
        explicit_bzero(pw, PMM_CTL_PASSWORD_MAX + 1);
    return rc;
}

/* ---- talking to the daemon ------------------------------------------------- */

/* Sends one request line and reads the whole answer into b. Prints its own
 * error and returns 1 on failure. */
static int ask_daemon(const char *path, const char *request, size_t len,
                      int timeout_s, pmm_buf *b)
{
    struct sockaddr_un sa;
    struct timeval tv = {.tv_sec = timeout_s};
    size_t off = 0;
    char chunk[65536];
    int fd;

    if (strlen(path) > PMM_SOCKET_PATH_MAX)
        return fail("socket path too long: %s", shown(path));
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail("socket: %s", strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int e = errno;
        const char *hint = "";
        if (e == ENOENT || e == ECONNREFUSED)
            hint = " (is pmgclusterd running?)";
        else if (e == EACCES || e == EPERM)
            hint = " (only root and the daemon's user may ask it)";
        close(fd);
        return fail("cannot reach pmgclusterd at %s: %s%s", path,
                    strerror(e), hint);
    }
    while (off < len) {
        ssize_t w = send(fd, request + off, len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
            break; /* it may have answered already (a refusal): read it */
        if (w < 0) {
            int e = errno;
            close(fd);
            return fail("cannot talk to pmgclusterd at %s: %s", path,
                        strerror(e));
        }
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof(chunk));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            if (e == EAGAIN || e == EWOULDBLOCK)
                return fail("pmgclusterd at %s did not answer within %d s",
                            path, timeout_s);
            return fail("cannot read from pmgclusterd at %s: %s", path,
                        strerror(e));
        }
        if (r == 0)
            break;
        if (pmm_buf_add(b, chunk, (size_t)r) != 0) {
            close(fd);
            return fail("answer from pmgclusterd is too large");
        }
    }
    close(fd);
    if (b->len == 0)
        return fail("pmgclusterd at %s closed the connection without an "
                    "answer", path);
    return 0;
}

typedef struct cli {
    const pmm_ctl_cmd *cmd; /* the command's row of the shared table */
    const char *cmdname;
    bool help, version, sock_given;
    const char *sock;
    const char *host; /* --host: status over HTTP */
    const char *token_file; /* --token-file: its bearer token */
    bool json;
    const char *pos[2];
    int npos;
    const char *password_file;
    const char *fingerprint;
    const char *master_ip;
    bool yes, force, accept;
    bool no_wait;
    bool purge;
    bool confirm;
    const char *db, *config; /* detach: --db CONNINFO, --config FILE */
} cli;

/* Prints the daemon's error in words. */
static void print_daemon_error(const pmm_json *doc)
{
    const pmm_json *e = pmm_json_get(doc, "error");
    char safe[512];

    term_safe(safe, sizeof(safe),
              e != NULL && e->type == PMM_JSON_STRING ? e->str
                                                      : "unknown error");
    fprintf(stderr, "pmgcm: %s\n", safe);
}

/* One request, one answer. Returns 0 with *doc (ok:true), else 1 with
 * everything printed. When final and in json mode, the answer is printed
 * on stdout as is, whatever it says; an ok:false answer that ends the
 * command (final or not) is printed the same way. */
static int call(const cli *c, const pmm_buf *req, int timeout_s, bool final,
                pmm_json **doc)
{
    pmm_buf in;
    char err[256];
    const pmm_json *ok;
    int rc = 1;

    *doc = NULL;
    if (req->err == -ENOMEM)
        return fail("out of memory");
    if (req->err != 0 || req->len > PMM_CTL_REQ_MAX)
        return fail("request too long");
    pmm_buf_init(&in, PMM_CTL_REPLY_MAX);
    if (ask_daemon(c->sock, req->p, req->len, timeout_s, &in) != 0)
        goto out;
    if (pmm_json_parse(in.p, in.len, doc, err, sizeof(err)) != 0) {
        fail("bad answer from pmgclusterd: %s", err);
        goto out;
    }
    ok = pmm_json_get(*doc, "ok");
    if (ok == NULL || ok->type != PMM_JSON_BOOL) {
        fail("bad answer from pmgclusterd: no 'ok'");
        goto out;
    }
    if (c->json && (final || !ok->b)) {
        if (write_json(in.p, in.len) != 0)
            goto out;
    } else if (!ok->b) {
        print_daemon_error(*doc);
    }
    if (ok->b)
        rc = 0;
out:
    if (rc != 0) {
        pmm_json_free(*doc);
        *doc = NULL;
    }
    pmm_buf_free(&in);
    return rc;
}

/* In text mode: the answer's "message" if it has one, else dflt. */
static int print_words(const cli *c, const pmm_json *doc, const char *dflt)
{
    const pmm_json *m = pmm_json_get(doc, "message");
    char safe[1024];

    if (c->json)
        return 0;
    if (m != NULL && m->type == PMM_JSON_STRING && m->str_len > 0)
        term_safe(safe, sizeof(safe), m->str);
    else
        snprintf(safe, sizeof(safe), "%s", dflt);
    printf("%s\n", safe);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* An unsigned integer member, or -1. */
static long long get_uint(const pmm_json *doc, const char *key)
{
    const pmm_json *v = pmm_json_get(doc, key);

    if (v == NULL || v->type != PMM_JSON_NUMBER || v->num < 0 ||
        v->num > 9007199254740992.0 || v->num != (double)(long long)v->num)
        return -1;
    return (long long)v->num;
}

/* A string member made safe for a terminal, or NULL. */
static const char *get_str(const pmm_json *doc, const char *key, char *buf,
                           size_t cap)
{
    const pmm_json *v = pmm_json_get(doc, key);

    if (v == NULL || v->type != PMM_JSON_STRING || v->str_len == 0)
        return NULL;
    term_safe(buf, cap, v->str);
    return buf;
}

/* A request {"cmd":CMD} (members are added with pmm_jadd, strings from
 * outside through pmm_jstr) or NULL when out of memory. */
static json_t *req_new(const char *cmd)
{
    return json_pack("{s:o}", "cmd", pmm_jstrz(cmd));
}

/* Writes request r (reference taken; NULL: building it failed) and a
 * '\n' into b, reserved once so that it never reallocates (it may hold a
 * password: pmm_buf_wipe it). A failure stays in b->err; call() then
 * sends nothing. */
static void req_put(pmm_buf *b, json_t *r)
{
    pmm_buf_init(b, PMM_CTL_REQ_MAX + 64);
    pmm_buf_reserve(b, PMM_CTL_REQ_MAX + 32);
    if ((pmm_json_put(b, r) != 0 || pmm_buf_puts(b, "\n") != 0) &&
        b->err == 0)
        b->err = -ENOMEM;
}

/* A request with no arguments. */
static void req_cmd(pmm_buf *b, const char *cmd)
{
    req_put(b, req_new(cmd));
}

/* ---- commands ----------------------------------------------------------------- */

/* ---- status over HTTP (--host) ------------------------------------------------ */

/* "1.2.3.4", "1.2.3.4:80", "[::1]", "[::1]:80", "::1", "name", "name:80"
 * into host and port (digits, 1..65535). 0 or -1. */
static int split_host(const char *spec, char *host, size_t hcap, char *port,
                      size_t pcap)
{
    const char *h = spec, *p = NULL, *colon;
    size_t hl;

    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (close == NULL || (close[1] != '\0' && close[1] != ':'))
            return -1;
        h = spec + 1;
        hl = (size_t)(close - h);
        if (close[1] == ':')
            p = close + 2;
    } else if ((colon = strchr(spec, ':')) != NULL &&
               strchr(colon + 1, ':') == NULL) {
        hl = (size_t)(colon - spec);
        p = colon + 1;
    } else {
        hl = strlen(spec); /* a name, IPv4, or a bare IPv6 address */
    }
    if (hl == 0 || hl >= hcap)
        return -1;
    for (size_t i = 0; i < hl; i++)
        if ((unsigned char)h[i] <= 0x20 || (unsigned char)h[i] >= 0x7f ||
            h[i] == '/' || h[i] == '[' || h[i] == ']')
            return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (p == NULL)
        p = HTTP_DEFAULT_PORT;
    {
        size_t pl = strlen(p);
        unsigned long v;
        if (pl == 0 || pl > 5 || pl >= pcap || strspn(p, "0123456789") != pl)
            return -1;
        v = strtoul(p, NULL, 10);
        if (v < 1 || v > 65535)
            return -1;
        snprintf(port, pcap, "%lu", v);
    }
    return 0;
}

static long long mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for fd to be ready for ev until the deadline. 0, or -ETIMEDOUT. */
static int wait_fd(int fd, short ev, long long deadline)
{
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = ev};
        long long left = deadline - mono_ms();
        int r;
        if (left <= 0)
            return -ETIMEDOUT;
        r = poll(&pfd, 1, (int)(left > 60000 ? 60000 : left));
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

/* Connects to one of host's addresses (non-blocking). fd or -errno. */
static int http_connect(const char *host, const char *port, long long deadline)
{
    struct addrinfo hints, *res = NULL;
    int fd = -1, rc, last = -ECONNREFUSED;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fail("cannot resolve %s: %s", host, gai_strerror(rc));
        return -EHOSTUNREACH;
    }
    for (struct addrinfo *a = res; a != NULL; a = a->ai_next) {
        int err = 0;
        socklen_t el = sizeof(err);

        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    a->ai_protocol);
        if (fd < 0) {
            last = -errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0)
            break;
        if (errno != EINPROGRESS) {
            last = -errno;
            close(fd);
            fd = -1;
            continue;
        }
        rc = wait_fd(fd, POLLOUT, deadline);
        if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 &&
            err == 0)
            break;
        last = rc != 0 ? rc : -(err != 0 ? err : EIO);
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd >= 0 ? fd : last;
}

/* The bearer token: the first line of path (not readable by everyone,
 * 1..256 printable characters). 0, or 1 with the message printed. */
static int read_token(const char *path, char *tok, size_t cap)
{
    char buf[300];
    size_t len;

    if (secret_first_line(path, "token file", buf, sizeof(buf), &len))
        return 1;
    for (size_t i = 0; i < len; i++) /* len <= sizeof(buf) */
        if ((unsigned char)buf[i] <= 0x20 || (unsigned char)buf[i] >= 0x7f)
            len = 0;
    if (len == 0 || len > 256 || len >= cap) {
        explicit_bzero(buf, sizeof(buf));
        return fail("token file %s: the first line must be the token (1 to "
                    "256 printable characters, no spaces)", shown(path));
    }
    memcpy(tok, buf, len);
    tok[len] = '\0';
    explicit_bzero(buf, sizeof(buf));
    return 0;
}

/* GET path from HOST[:PORT] over HTTP/1.1 (Connection: close), with the
 * bearer token when given; the answer's body (200 only) into body.
 * Prints its own error; 0 or 1. */
static int ask_http(const char *spec, const char *path, const char *token,
                    pmm_buf *body)
{
    char host[256], port[8], req[1024], chunk[65536];
    long long deadline = mono_ms() + IO_TIMEOUT_S * 1000LL;
    pmm_buf in;
    size_t off = 0, len;
    const char *sep, *hdr_end, *cl;
    int fd, st, rc = 1, vmin;

    if (split_host(spec, host, sizeof(host), port, sizeof(port)) != 0)
        return fail("--host: '%s' is not HOST, HOST:PORT or [IPv6]:PORT",
                    shown(spec));
    fd = http_connect(host, port, deadline);
    if (fd < 0) {
        if (fd == -EHOSTUNREACH)
            return 1;
        return fail("cannot reach the status port at %s%s%s:%s: %s (is "
                    "pmgclusterd running there, with status_port %s?)",
                    strchr(host, ':') ? "[" : "", host,
                    strchr(host, ':') ? "]" : "", port,
                    fd == -ETIMEDOUT ? "timed out" : strerror(-fd), port);
    }
    len = (size_t)snprintf(req, sizeof(req),
                           "GET %s HTTP/1.1\r\nHost: %s%s%s:%s\r\n"
                           "User-Agent: pmgcm/" PACKAGE_VERSION "\r\n"
                           "Accept: application/json\r\n"
                           "%s%s%s"
                           "Connection: close\r\n\r\n",
                           path, strchr(host, ':') ? "[" : "", host,
                           strchr(host, ':') ? "]" : "", port,
                           token ? "Authorization: Bearer " : "",
                           token ? token : "", token ? "\r\n" : "");
    while (off < len) {
        ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_fd(fd, POLLOUT, deadline) != 0)
                break;
            continue;
        }
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    if (off < len) {
        close(fd);
        return fail("cannot send to the status port at %s: %s", spec,
                    strerror(errno));
    }
    pmm_buf_init(&in, PMM_CTL_REPLY_MAX + 65536);
    for (;;) {
        ssize_t r = recv(fd, chunk, sizeof(chunk), 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_fd(fd, POLLIN, deadline) != 0) {
                close(fd);
                pmm_buf_free(&in);
                return fail("the status port at %s did not answer within "
                            "%d s", spec, IO_TIMEOUT_S);
            }
            continue;
        }
        if (r < 0) {
            int e = errno;
            close(fd);
            pmm_buf_free(&in);
            return fail("cannot read from the status port at %s: %s", spec,
                        strerror(e));
        }
        if (r == 0)
            break;
        if (pmm_buf_add(&in, chunk, (size_t)r) != 0) {
            close(fd);
            pmm_buf_free(&in);
            return fail("answer from %s is too large", spec);
        }
    }
    close(fd);
    if (in.len == 0 || in.p == NULL) {
        pmm_buf_free(&in);
        return fail("the status port at %s closed the connection without "
                    "an answer", spec);
    }
    if (sscanf(in.p, "HTTP/1.%d %d", &vmin, &st) != 2 ||
        (sep = strstr(in.p, "\r\n\r\n")) == NULL) {
        fail("%s did not answer in HTTP (is that its status port?)", spec);
        goto out;
    }
    hdr_end = sep + 2;
    if (st != 200) {
        /* "HTTP/1.1 404 Not Found" -> "404 Not Found" */
        char raw[128], line[128];
        size_t ll = strcspn(in.p + 9, "\r\n");
        snprintf(raw, sizeof(raw), "%.*s", (int)(ll < 120 ? ll : 120),
                 in.p + 9);
        term_safe(line, sizeof(line), raw);
        fail("the status port at %s answered %s%s", spec, line,
             st == 401 ? " (it wants a token: --token-file FILE)"
             : st == 403 ? " (it answers /status only on its own host: "
                           "status_access = local)"
                         : "");
        goto out;
    }
    /* Content-Length, when given, must match */
    for (cl = in.p; cl != NULL && cl < hdr_end;) {
        cl = strstr(cl, "\r\n");
        if (cl == NULL || cl >= hdr_end)
            break;
        cl += 2;
        if (strncasecmp(cl, "content-length:", 15) == 0) {
            unsigned long long want = strtoull(cl + 15, NULL, 10);
            if (want != (unsigned long long)(in.len - (size_t)(sep + 4 - in.p))) {
                fail("the answer from %s was cut short", spec);
                goto out;
            }
        }
    }
    if (pmm_buf_add(body, sep + 4, in.len - (size_t)(sep + 4 - in.p)) != 0) {
        fail("answer from %s is too large", spec);
        goto out;
    }
    rc = 0;
out:
    pmm_buf_free(&in);
    return rc;
}

/* Prints a status answer's rows: the table, or the rows as JSON. */
static int print_status(const cli *c, pmm_json *doc, const char *from)
{
    pmm_buf out;
    pmm_status_row *rows = NULL;
    size_t n = 0;
    char err[256];
    int rc = 1;

    pmm_buf_init(&out, PMM_CTL_REPLY_MAX * 2);
    if (pmm_status_from_json(pmm_json_get(doc, "members"), &rows, &n, err,
                             sizeof(err)) != 0) {
        fail("bad answer from %s: %s", from, err);
        goto out;
    }
    pmm_status_sort(rows, n);
    if (c->json)
        pmm_status_write_json(&out, rows, n);
    else
        pmm_status_render_text(&out, rows, n);
    if (out.err != 0) {
        fail("%s", strerror(-out.err));
        goto out;
    }
    rc = c->json ? write_json(out.p, out.len) : write_out(out.p, out.len);
out:
    free(rows);
    pmm_buf_free(&out);
    return rc;
}

static int cmd_status_http(const cli *c)
{
    char token[300];
    pmm_buf body;
    pmm_json *doc = NULL;
    const pmm_json *ok;
    char err[256], from[300];
    int rc = 1;

    snprintf(from, sizeof(from), "the status port at %s", c->host);
    pmm_buf_init(&body, PMM_CTL_REPLY_MAX);
    if (c->token_file != NULL &&
        read_token(c->token_file, token, sizeof(token)) != 0)
        goto out;
    if (ask_http(c->host, "/status", c->token_file ? token : NULL,
                 &body) != 0)
        goto out;
    if (body.p == NULL ||
        pmm_json_parse(body.p, body.len, &doc, err, sizeof(err)) != 0) {
        fail("bad answer from %s: %s", from, body.p ? err : "empty");
        goto out;
    }
    ok = pmm_json_get(doc, "ok");
    if (ok == NULL || ok->type != PMM_JSON_BOOL || !ok->b) {
        print_daemon_error(doc);
        goto out;
    }
    rc = print_status(c, doc, from);
out:
    explicit_bzero(token, sizeof(token));
    pmm_json_free(doc);
    pmm_buf_free(&body);
    return rc;
}

static int cmd_status(const cli *c)
{
    pmm_buf req;
    pmm_json *doc;
    int rc;
    cli quiet = *c;

    if (c->host != NULL)
        return cmd_status_http(c);
    quiet.json = false; /* status prints the rows, not the envelope */
    pmm_buf_init(&req, 64);
    pmm_buf_puts(&req, "status\n");
    rc = call(&quiet, &req, IO_TIMEOUT_S, true, &doc);
    pmm_buf_free(&req);
    if (rc != 0)
        return 1;
    rc = print_status(c, doc, "pmgclusterd");
    pmm_json_free(doc);
    return rc;
}

/* drain / undrain: the daemon's message in text mode */
static int cmd_drain(const cli *c, bool drain)
{
    pmm_buf req;
    pmm_json *doc;
    int rc;

    req_cmd(&req, drain ? "drain" : "undrain");
    rc = call(c, &req, IO_TIMEOUT_S, true, &doc);
    pmm_buf_free(&req);
    if (rc != 0)
        return 1;
    rc = print_words(c, doc, drain ? "node drained" : "node undrained");
    pmm_json_free(doc);
    return rc;
}

static int cmd_create(const cli *c)
{
    char pw[PMM_CTL_PASSWORD_MAX + 1], fp[PMM_CTL_FP_MAX + 1], line[512];
    size_t pwlen;
    pmm_buf req;
    pmm_json *doc;
    long long cid;
    int rc;

    if (get_password(c->password_file, true, pw, &pwlen) != 0) {
        explicit_bzero(pw, sizeof(pw));
        return 1;
    }
    req_put(&req, pmm_jadd(req_new("create"), "password",
                           pmm_jstr(pw, pwlen)));
    explicit_bzero(pw, sizeof(pw));
    rc = call(c, &req, LONG_TIMEOUT_S, true, &doc);
    pmm_buf_wipe(&req);
    if (rc != 0)
        return 1;
    cid = get_uint(doc, "cid");
    if (cid < 0)
        cid = 1;
    if (get_str(doc, "fingerprint", fp, sizeof(fp)) != NULL)
        snprintf(line, sizeof(line),
                 "cluster created: this node is master (cid %lld)\n"
                 "fingerprint: %s", cid, fp);
    else
        snprintf(line, sizeof(line),
                 "cluster created: this node is master (cid %lld)", cid);
    rc = print_words(c, doc, line);
    pmm_json_free(doc);
    return rc;
}

/* Asks the daemon for the master's fingerprint and has it confirmed.
 * 0 with fp filled, or 1. */
static int fetch_and_confirm_fingerprint(const cli *c, const char *ip,
                                         char *fp, size_t cap)
{
    pmm_buf req;
    pmm_json *doc;
    const pmm_json *v;
    char answer[64];
    size_t alen;
    int rc;

    if (!c->yes && !tty_open())
        return fail("no terminal to confirm the master's fingerprint: use "
                    "--fingerprint FP (see `pmgcm join-cmd` on the master) "
                    "or --yes");
    req_put(&req, pmm_jadd(req_new("fingerprint"), "ip", pmm_jstrz(ip)));
    rc = call(c, &req, LONG_TIMEOUT_S, false, &doc);
    pmm_buf_free(&req);
    if (rc != 0)
        return 1;
    v = pmm_json_get(doc, "fingerprint");
    if (v == NULL || v->type != PMM_JSON_STRING || v->str_len >= cap ||
        !fingerprint_ok(v->str)) {
        pmm_json_free(doc);
        return fail("bad answer from pmgclusterd: no valid 'fingerprint'");
    }
    memcpy(fp, v->str, v->str_len + 1);
    pmm_json_free(doc);
    if (c->yes) {
        fprintf(stderr, "pmgcm: the master's certificate fingerprint is %s "
                        "(accepted by --yes)\n", fp);
        return 0;
    }
    tty_puts("The master's certificate fingerprint is\n  ");
    tty_puts(fp);
    tty_puts("\nAre you sure you want to join? (yes/no): ");
    rc = tty_read_line(answer, sizeof(answer), &alen);
    if (rc == -ENODATA)
        tty_puts("\n");
    if (rc == 0) {
        /* surrounding blanks are forgiven */
        char *s = answer, *e = answer + alen;
        while (*s == ' ' || *s == '\t')
            s++;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
            *--e = '\0';
        if (strcasecmp(s, "yes") == 0)
            return 0;
    }
    return fail("aborted");
}

/* A number member of obj, or 0. */
static double num_of(const pmm_json *obj, const char *key)
{
    const pmm_json *v = obj ? pmm_json_get(obj, key) : NULL;
    return v && v->type == PMM_JSON_NUMBER ? v->num : 0;
}

#define human_bytes pmc_human_bytes

/* After a join: wait until the node's database holds the master's data
 * (a snapshot, then caught up), with a progress line on a terminal (both
 * stdout and stderr: nothing is drawn into a file or a pipe) that fits
 * its width and is redrawn in place. 0 in sync (or no database
 * configured), 1 failed (printed). */
/* One step of wait_data's loop: returns when the daemon says its data is
 * in sync, at most PMM_WAIT_SYNC_MS later (wait-sync), so the wait ends the
 * moment the data is in; a daemon that does not know wait-sync (an older
 * one: *sleep set from then on) makes it a sleep of that long. A daemon
 * that cannot be reached is reported by the status call that follows. */
static void wait_step(const cli *c, bool *sleep)
{
    if (!*sleep) {
        pmm_buf req, in;
        pmm_json *doc = NULL;
        char err[64];
        bool ok = false;
        req_cmd(&req, "wait-sync");
        pmm_buf_init(&in, PMM_CTL_REPLY_MAX);
        int rc = req.err == 0 ? ask_daemon(c->sock, req.p, req.len,
                                           IO_TIMEOUT_S, &in)
                              : -1;
        if (rc == 0 && pmm_json_parse(in.p, in.len, &doc, err,
                                      sizeof(err)) == 0) {
            const pmm_json *o = pmm_json_get(doc, "ok");
            ok = o && o->type == PMM_JSON_BOOL && o->b;
        }
        pmm_json_free(doc);
        pmm_buf_free(&req);
        pmm_buf_free(&in);
        if (ok || rc != 0) return;
        *sleep = true;
    }
    struct timespec ts = {0, PMM_WAIT_SYNC_MS * 1000000L};
    nanosleep(&ts, NULL);
}

static int wait_data(const cli *c)
{
    bool sleep = false;
    bool tty = isatty(STDOUT_FILENO) && isatty(STDERR_FILENO) && !c->json;
    bool drawn = false;
    char last_err[300] = "";
    for (;;) {
        pmm_buf req;
        pmm_json *doc = NULL;
        req_cmd(&req, "status");
        cli quiet = *c;
        quiet.json = false;
        int rc = call(&quiet, &req, LONG_TIMEOUT_S, false, &doc);
        pmm_buf_free(&req);
        if (rc != 0) {
            if (drawn) fprintf(stderr, "\r\033[K");
            return 1;
        }
        const pmm_json *st = pmm_json_get(doc, "store");
        if (!st || st->type != PMM_JSON_OBJECT) {
            pmm_json_free(doc);
            return 0; /* no replicated database on this node */
        }
        char state[32] = "", err[300] = "";
        get_str(st, "state", state, sizeof(state));
        get_str(st, "error", err, sizeof(err));
        const pmm_json *sn = pmm_json_get(st, "snapshot");
        pmc_progress p = {
            .state = state, .error = err,
            .rows = num_of(sn, "rows"), .est_rows = num_of(sn, "est_rows"),
            .bytes = num_of(sn, "bytes"), .est_bytes = num_of(sn, "est_bytes"),
            .tables_done = num_of(sn, "tables_done"),
            .tables = num_of(sn, "tables"),
            .elapsed_ms = num_of(sn, "elapsed_ms"),
        };
        const pmm_json *lv = pmm_json_get(st, "loaded");
        if (lv && lv->type == PMM_JSON_BOOL) p.loaded = lv->b;
        pmm_json_free(doc);
        if (strcmp(state, "in-sync") == 0) {
            if (drawn) fprintf(stderr, "\r\033[K");
            if (!c->json) {
                char hb[32];
                human_bytes(p.bytes, hb, sizeof(hb));
                if (p.rows > 0)
                    printf("data in sync: snapshot of %.0f rows (%s) loaded "
                           "in %.1f s\n", p.rows, hb, p.elapsed_ms / 1000.0);
                else
                    printf("data in sync\n");
            }
            return 0;
        }
        if (strstr(err, "schema mismatch")) {
            if (drawn) fprintf(stderr, "\r\033[K");
            fprintf(stderr, "pmgcm: joined, but the data cannot be copied: "
                    "%s\npmgcm: nothing was changed in this node's "
                    "database; fix the table definitions (the node keeps "
                    "retrying) or `pmgcm delete` it on the master\n", err);
            return 1;
        }
        if (err[0] && strcmp(err, last_err) != 0 && !tty)
            fprintf(stderr, "pmgcm: waiting for data: %s\n", err);
        snprintf(last_err, sizeof(last_err), "%s", err);
        if (tty) {
            char line[1024];
            pmc_progress_line(line, sizeof(line),
                              pmc_term_width(STDERR_FILENO), &p);
            fprintf(stderr, "\r\033[K%s", line);
            fflush(stderr);
            drawn = true;
        }
        wait_step(c, &sleep);
    }
}

/* join: is this node in a cluster already? Asked before any prompt, so
 * nobody types a fingerprint and a password to be told so. 0 not in one,
 * 1 in one or the daemon cannot be asked (printed). */
static int check_not_member(const cli *c)
{
    pmm_buf req;
    pmm_json *doc;
    const pmm_json *cl;
    int rc;

    /* a refusal is printed as JSON with --output-format json, an answer
     * never (final = false) */
    req_cmd(&req, "status");
    rc = call(c, &req, IO_TIMEOUT_S, false, &doc);
    pmm_buf_free(&req);
    if (rc != 0)
        return 1;
    cl = pmm_json_get(doc, "cluster");
    if (cl != NULL && cl->type == PMM_JSON_OBJECT) {
        long long mcid = get_uint(cl, "master_cid");
        const pmm_json *m = pmm_json_get(doc, "members");
        char name[80] = "?", ip[64] = "?", msg[400];
        for (const pmm_json *r = m && m->type == PMM_JSON_ARRAY ? m->child
                                                                : NULL;
             r != NULL; r = r->next)
            if (get_uint(r, "cid") == mcid) {
                get_str(r, "name", name, sizeof(name));
                get_str(r, "ip", ip, sizeof(ip));
            }
        snprintf(msg, sizeof(msg), "this node is already in a cluster "
                 "(master %s, cid %lld, at %s): nothing done; to move it, "
                 "delete it on that master first", name, mcid, ip);
        pmm_json_free(doc);
        if (c->json) {
            write_jvalue(json_pack("{s:b, s:o}", "ok", 0, "error",
                                   pmm_jstrz(msg)));
            return 1;
        }
        return fail("%s", msg);
    }
    pmm_json_free(doc);
    return 0;
}

static int cmd_join(const cli *c)
{
    char pw[PMM_CTL_PASSWORD_MAX + 1], fp[PMM_CTL_FP_MAX + 1], line[128];
    size_t pwlen = 0;
    const char *ip = c->pos[0];
    pmm_buf req;
    pmm_json *doc;
    long long cid;
    int rc;

    /* everything local first: a bad password file costs no network trip */
    if (c->password_file != NULL &&
        password_from_file(c->password_file, pw, &pwlen) != 0)
        return 1;
    rc = 0;
    if (c->password_file == NULL && !tty_open())
        rc = fail("no terminal: use --password-file");
    if (rc == 0 && c->fingerprint == NULL && !c->yes && !tty_open())
        rc = fail("no terminal to confirm the master's fingerprint: use "
                  "--fingerprint FP (see `pmgcm join-cmd` on the master) "
                  "or --yes");
    /* then the daemon: already in a cluster? (before any prompt) */
    if (rc == 0)
        rc = check_not_member(c);
    if (rc == 0 && c->fingerprint != NULL)
        snprintf(fp, sizeof(fp), "%s", c->fingerprint);
    else if (rc == 0)
        rc = fetch_and_confirm_fingerprint(c, ip, fp, sizeof(fp));
    if (rc == 0 && c->password_file == NULL)
        rc = get_password(NULL, false, pw, &pwlen);
    if (rc != 0) {
        explicit_bzero(pw, sizeof(pw));
        return 1;
    }
    req_put(&req, pmm_jadd(pmm_jadd(pmm_jadd(req_new("join"), "ip",
                                             pmm_jstrz(ip)),
                                    "fingerprint", pmm_jstrz(fp)),
                           "password", pmm_jstr(pw, pwlen)));
    explicit_bzero(pw, sizeof(pw));
    rc = call(c, &req, LONG_TIMEOUT_S, true, &doc);
    pmm_buf_wipe(&req);
    if (rc != 0)
        return 1;
    cid = get_uint(doc, "cid");
    if (cid >= 0)
        snprintf(line, sizeof(line), "joined cluster as cid %lld", cid);
    else
        snprintf(line, sizeof(line), "joined cluster");
    rc = print_words(c, doc, line);
    pmm_json_free(doc);
    if (rc == 0 && !c->no_wait)
        rc = wait_data(c);
    return rc;
}

static int cmd_join_cmd(const cli *c)
{
    char line[1024];
    pmm_buf req;
    pmm_json *doc;
    int rc;

    req_cmd(&req, "join-cmd");
    rc = call(c, &req, LONG_TIMEOUT_S, true, &doc);
    pmm_buf_free(&req);
    if (rc != 0)
        return 1;
    if (!c->json) {
        if (get_str(doc, "command", line, sizeof(line)) == NULL) {
            pmm_json_free(doc);
            return fail("bad answer from pmgclusterd: no 'command'");
        }
        printf("%s\n", line);
        rc = fflush(stdout) == 0 ? 0 : 1;
    }
    pmm_json_free(doc);
    return rc;
}

static int cmd_delete(const cli *c, unsigned cid)
{
    char line[128];
    pmm_buf req;
    json_t *r;
    pmm_json *doc;
    int rc;

    r = pmm_jadd(req_new("delete"), "cid", json_integer((json_int_t)cid));
    if (c->purge)
        r = pmm_jadd(r, "purge", json_true());
    req_put(&req, r);
    rc = call(c, &req, LONG_TIMEOUT_S, true, &doc);
    pmm_buf_free(&req);
    if (rc != 0)
        return 1;
    {
        const pmm_json *kr = pmm_json_get(doc, "key_rotated");
        snprintf(line, sizeof(line),
                 "node with cid %u deleted from the cluster%s%s", cid,
                 kr != NULL && kr->type == PMM_JSON_BOOL && kr->b
                     ? " (gossip key rotated)" : "",
                 c->purge ? "; its rows are being purged on every node" : "");
    }
    rc = print_words(c, doc, line);
    pmm_json_free(doc);
    return rc;
}

static int cmd_promote(const cli *c)
{
    char line[128];
    pmm_buf req;
    json_t *r;
    pmm_json *doc;
    long long cid, epoch;
    int rc;

    r = pmm_jadd(req_new("promote"), "force", json_boolean(c->force));
    if (c->accept)
        r = pmm_jadd(r, "accept_data_loss", json_true());
    req_put(&req, r);
    rc = call(c, &req, LONG_TIMEOUT_S, true, &doc);
    pmm_buf_free(&req);
    if (rc != 0)
        return 1;
    cid = get_uint(doc, "cid");
    epoch = get_uint(doc, "epoch");
    if (cid >= 0 && epoch >= 0)
        snprintf(line, sizeof(line),
                 "this node is now master (cid %lld, epoch %lld)", cid,
                 epoch);
    else if (cid >= 0)
        snprintf(line, sizeof(line), "this node is now master (cid %lld)",
                 cid);
    else
        snprintf(line, sizeof(line), "this node is now master");
    rc = print_words(c, doc, line);
    {
        char lost[1024];
        if (rc == 0 && !c->json &&
            get_str(doc, "lost", lost, sizeof(lost)) != NULL) {
            printf("accepted data loss: the cluster loses this: %s\n", lost);
            rc = fflush(stdout) == 0 ? 0 : 1;
        }
    }
    pmm_json_free(doc);
    return rc;
}

/* pmgcm backups [list | clear ID|divergence] */
static int cmd_backups(const cli *c)
{
    pmm_buf req;
    pmm_json *doc;
    int rc;
    const char *sub = c->npos > 0 ? c->pos[0] : "list";

    json_t *r = pmm_jadd(req_new("backups"), "sub", pmm_jstrz(sub));
    if (c->npos > 1)
        r = pmm_jadd(r, "id", pmm_jstrz(c->pos[1]));
    req_put(&req, r);
    rc = call(c, &req, LONG_TIMEOUT_S, true, &doc);
    pmm_buf_free(&req);
    if (rc != 0)
        return 1;
    if (c->json || strcmp(sub, "list") != 0) {
        rc = print_words(c, doc, "done");
        pmm_json_free(doc);
        return rc;
    }
    const pmm_json *arr = pmm_json_get(doc, "backups");
    size_t n = 0;
    for (const pmm_json *b = arr && arr->type == PMM_JSON_ARRAY ? arr->child
                                                               : NULL;
         b != NULL; b = b->next, n++) {
        char created[64], kind[32], schema[128], reason[1024];
        long long id = get_uint(b, "id"), tables = get_uint(b, "tables"),
                  rows = get_uint(b, "rows");
        if (get_str(b, "created", created, sizeof(created)) == NULL)
            strcpy(created, "?");
        if (get_str(b, "kind", kind, sizeof(kind)) == NULL)
            strcpy(kind, "?");
        if (get_str(b, "reason", reason, sizeof(reason)) == NULL)
            reason[0] = '\0';
        if (get_str(b, "schema", schema, sizeof(schema)) != NULL)
            printf("%lld  %s  %s  %lld table(s), %lld rows in schema %s\n"
                   "    %s\n", id, created, kind, tables, rows, schema,
                   reason);
        else
            printf("%lld  %s  %s  (a note)\n    %s\n", id, created, kind,
                   reason);
    }
    if (n == 0)
        printf("no backups\n");
    long long d = get_uint(doc, "divergence");
    printf("divergence: %lld record(s) in pmgcm.divergence\n", d < 0 ? 0 : d);
    if (n > 0 || d > 0)
        printf("(pmgcm backups clear ID | clear divergence, once handled)\n");
    pmm_json_free(doc);
    return fflush(stdout) == 0 ? 0 : 1;
}

static int cmd_files(const cli *c)
{
    char line[200], digest[80];
    pmm_buf req;
    pmm_json *doc;
    int rc;

    req_put(&req, pmm_jadd(req_new("files-publish"), "confirm",
                           json_boolean(c->confirm)));
    rc = call(c, &req, LONG_TIMEOUT_S, true, &doc);
    pmm_buf_free(&req);
    if (rc != 0)
        return 1;
    if (get_str(doc, "digest", digest, sizeof(digest)) == NULL)
        snprintf(digest, sizeof(digest), "?");
    snprintf(line, sizeof(line),
             "published manifest %.16s (%lld files; %lld dropped files are "
             "kept in the nodes' trash)", digest, get_uint(doc, "files"),
             get_uint(doc, "dropped"));
    rc = print_words(c, doc, line);
    pmm_json_free(doc);
    return rc;
}

static int cmd_sync(const cli *c)
{
    char line[160], ip[64];
    pmm_buf req;
    pmm_json *doc;
    int rc;

    json_t *r = req_new("sync");
    if (c->master_ip != NULL)
        r = pmm_jadd(r, "master_ip", pmm_jstrz(c->master_ip));
    req_put(&req, r);
    rc = call(c, &req, LONG_TIMEOUT_S, true, &doc);
    pmm_buf_free(&req);
    if (rc != 0)
        return 1;
    {
        long long epoch = get_uint(doc, "epoch");
        long long version = get_uint(doc, "version");
        const pmm_json *up = pmm_json_get(doc, "updated");
        int o = snprintf(line, sizeof(line), "sync done");
        if (get_str(doc, "master_ip", ip, sizeof(ip)) != NULL)
            o += snprintf(line + o, sizeof(line) - (size_t)o, " (master %s)",
                          ip);
        if (epoch >= 0 && version >= 0)
            snprintf(line + o, sizeof(line) - (size_t)o,
                     ": cluster config epoch %lld, version %lld%s", epoch,
                     version,
                     up == NULL || up->type != PMM_JSON_BOOL ? ""
                     : up->b ? " (updated)" : " (already current)");
    }
    rc = print_words(c, doc, line);
    pmm_json_free(doc);
    return rc;
}

/* ---- update-fingerprints ----------------------------------------------------- */

/* Asks yes/no on the terminal. true for "yes". */
static bool tty_yes(const char *question)
{
    char answer[64];
    size_t alen;
    int rc;

    tty_puts(question);
    rc = tty_read_line(answer, sizeof(answer), &alen);
    if (rc == -ENODATA)
        tty_puts("\n");
    if (rc != 0)
        return false;
    char *s = answer, *e = answer + alen;
    while (*s == ' ' || *s == '\t')
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
        *--e = '\0';
    return strcasecmp(s, "yes") == 0;
}

/* pmgcm update-fingerprints [--yes]: the master probes every node; each
 * changed certificate is shown and pinned only once confirmed (typed yes,
 * or --yes), with exactly the fingerprint shown. */
static int cmd_update_fp(const cli *c)
{
    pmm_buf req;
    pmm_json *doc;
    const pmm_json *nodes;
    json_t *out;
    int rc, pending = 0, unreachable = 0, pinned = 0;
    cli quiet = *c;

    quiet.json = false; /* for the pins: one JSON document at the end */
    req_cmd(&req, "update-fingerprints");
    /* a refusal is printed as JSON with --output-format json */
    rc = call(c, &req, LONG_TIMEOUT_S, false, &doc);
    pmm_buf_free(&req);
    if (rc != 0)
        return 1;
    nodes = pmm_json_get(doc, "nodes");
    /* the --output-format json document: {"ok":true,"nodes":[...],
     * "pinned":N,"not_pinned":N,"unreachable":N}; NULL once out of
     * memory (or in text mode) */
    out = c->json ? json_pack("{s:b, s:[]}", "ok", 1, "nodes") : NULL;
    for (const pmm_json *n = nodes && nodes->type == PMM_JSON_ARRAY
                                 ? nodes->child : NULL;
         n != NULL; n = n->next) {
        char name[80] = "?", ip[64] = "?", state[24] = "?", old[128] = "",
             now[128] = "", err[128] = "";
        long long cid = get_uint(n, "cid");
        get_str(n, "name", name, sizeof(name));
        get_str(n, "ip", ip, sizeof(ip));
        get_str(n, "state", state, sizeof(state));
        get_str(n, "fingerprint", old, sizeof(old));
        get_str(n, "presented", now, sizeof(now));
        get_str(n, "error", err, sizeof(err));
        if (strcmp(state, "changed") == 0) {
            bool ok = false;
            if (!c->json)
                printf("%s (cid %lld, %s): its certificate CHANGED\n"
                       "    pinned:    %s\n    presents:  %s\n", name, cid,
                       ip, old, now);
            fflush(stdout);
            if (c->yes) {
                ok = true;
            } else if (!c->json && tty_open()) {
                tty_puts("    Check it on that node (`pmgcm status "
                         "--output-format json` there shows its\n"
                         "    \"fingerprint\"). Pin the new one? "
                         "(yes/no): ");
                ok = tty_yes("");
            }
            if (ok && fingerprint_ok(now)) {
                pmm_buf r2;
                pmm_json *d2;
                req_put(&r2, pmm_jadd(pmm_jadd(req_new("update-fingerprints"),
                                               "cid", json_integer(cid)),
                                      "fingerprint", pmm_jstrz(now)));
                rc = call(&quiet, &r2, LONG_TIMEOUT_S, false, &d2);
                pmm_buf_free(&r2);
                if (rc == 0) {
                    snprintf(state, sizeof(state), "updated");
                    pinned++;
                    if (!c->json)
                        printf("    pinned the new fingerprint\n");
                    pmm_json_free(d2);
                } else {
                    pending++;
                }
            } else {
                pending++;
                if (!c->json)
                    printf("    not pinned (confirm with yes, or --yes)\n");
            }
        } else if (strcmp(state, "unreachable") == 0) {
            unreachable++;
            if (!c->json)
                printf("%s (cid %lld, %s): unreachable (%s): not checked\n",
                       name, cid, ip, err[0] ? err : "?");
        } else if (strcmp(state, "updated") == 0) {
            if (!c->json)
                printf("%s (cid %lld, %s): this node: its own entry now %s "
                       "(was %s)\n", name, cid, ip, now, old);
        } else if (!c->json) {
            printf("%s (cid %lld, %s): unchanged\n", name, cid, ip);
        }
        if (out != NULL) {
            bool updated = strcmp(state, "updated") == 0;
            json_t *o = json_pack("{s:I, s:o, s:o, s:o, s:o}", "cid",
                                  (json_int_t)cid, "name", pmm_jstrz(name),
                                  "ip", pmm_jstrz(ip), "state",
                                  pmm_jstrz(state), "fingerprint",
                                  pmm_jstrz(updated && now[0] ? now : old));
            if (now[0] && !updated)
                o = pmm_jadd(o, "presented", pmm_jstrz(now));
            if (err[0])
                o = pmm_jadd(o, "error", pmm_jstrz(err));
            if (json_array_append_new(json_object_get(out, "nodes"), o)) {
                json_decref(out); /* o was released */
                out = NULL;
            }
        }
    }
    pmm_json_free(doc);
    out = pmm_jadd(out, "pinned", json_integer(pinned));
    out = pmm_jadd(out, "not_pinned", json_integer(pending));
    out = pmm_jadd(out, "unreachable", json_integer(unreachable));
    rc = 0;
    if (c->json)
        rc = write_jvalue(out);
    else if (pending > 0 || unreachable > 0)
        printf("%d changed certificate(s) not pinned, %d node(s) not "
               "checked\n", pending, unreachable);
    else
        printf("fingerprints up to date%s\n",
               pinned ? " (new ones pinned)" : "");
    if (fflush(stdout) != 0)
        rc = 1;
    return rc != 0 || pending > 0 || unreachable > 0 ? 1 : 0;
}

/* ---- command line ---------------------------------------------------------- */

/* --output-format's value; false when bad. */
static bool set_format(cli *c, const char *fmt)
{
    json_pretty = false;
    if (strcmp(fmt, "json") == 0)
        c->json = true;
    else if (strcmp(fmt, "json-pretty") == 0)
        c->json = json_pretty = true;
    else if (strcmp(fmt, "text") == 0)
        c->json = false;
    else
        return false;
    return true;
}

/* One option's value, checked on its own. -1 to go on, or 2 (printed). */
static int take_opt(cli *c, int id, const char *spelled, const char *v)
{
    switch (id) {
    case PMM_OPT_SOCKET:
        if (v[0] == '\0')
            return usage_error("%s: empty socket path", shown(spelled));
        c->sock = v;
        c->sock_given = true;
        break;
    case PMM_OPT_HOST: {
        char h[256], p[8];
        if (split_host(v, h, sizeof(h), p, sizeof(p)) != 0)
            return usage_error("--host: '%s' is not HOST, HOST:PORT or "
                               "[IPv6]:PORT", shown(v));
        c->host = v;
        break;
    }
    case PMM_OPT_TOKEN_FILE:
    case PMM_OPT_PASSWORD_FILE:
        if (v[0] == '\0')
            return usage_error("%s: empty file name", shown(spelled));
        if (id == PMM_OPT_TOKEN_FILE)
            c->token_file = v;
        else
            c->password_file = v;
        break;
    case PMM_OPT_OUTPUT_FORMAT:
        if (!set_format(c, v))
            return usage_error("--output-format must be text, json or "
                               "json-pretty, not '%s'", shown(v));
        break;
    case PMM_OPT_HELP:
        c->help = true;
        break;
    case PMM_OPT_VERSION:
        c->version = true;
        break;
    case PMM_OPT_FINGERPRINT:
        if (!fingerprint_ok(v))
            return usage_error("--fingerprint '%s' is not a certificate "
                               "fingerprint: 32 pairs of hex digits "
                               "joined by ':' (AB:CD:...:EF), or the 64 "
                               "digits alone; `pmgcm join-cmd` on the "
                               "master prints it", shown(v));
        c->fingerprint = v;
        break;
    case PMM_OPT_MASTER_IP:
    case PMM_OPT_MASTER_IP_PMG:
        if (!ip_ok(v))
            return usage_error("%s: '%s' is not an IPv4 or IPv6 address",
                               shown(spelled), shown(v));
        c->master_ip = v;
        break;
    case PMM_OPT_YES: c->yes = true; break;
    case PMM_OPT_NO_WAIT: c->no_wait = true; break;
    case PMM_OPT_PURGE: c->purge = true; break;
    case PMM_OPT_FORCE: c->force = true; break;
    case PMM_OPT_ACCEPT_DATA_LOSS: c->accept = true; break;
    case PMM_OPT_CONFIRM: c->confirm = true; break;
    case PMM_OPT_DB:
    case PMM_OPT_CONFIG:
        if (v[0] == '\0')
            return usage_error("%s needs a value", shown(spelled));
        if (id == PMM_OPT_DB)
            c->db = v;
        else
            c->config = v;
        break;
    default:
        return usage_error("internal error: option %d", id);
    }
    return -1;
}

/* The option's text as typed ("--fingerprint=AB", "--fingerprint"),
 * cut at '='. getopt_long leaves it at argv[optind - 1], or optind - 2
 * when its value was the next word. */
static const char *typed_opt(char **argv, bool value_apart, char *buf,
                             size_t cap)
{
    const char *a = argv[optind - (value_apart ? 2 : 1)];
    size_t n = strcspn(a, "=");

    snprintf(buf, cap, "%.*s", (int)(n < cap ? n : cap - 1), a);
    return buf;
}

/* Step 1: the command line into c with getopt_long over the shared
 * option table (pmm_cli_opts[]); options may come before or after the
 * command; each command takes the global options and its own (its row's
 * opts). Returns -1 to go on, or the exit code (a usage error, --help,
 * --version). */
static int parse_args(cli *c, int argc, char **argv)
{
    struct option lo[PMM_OPT_COUNT + 1];
    /* '-': words come back in order as ch 1 (options may follow the
     * command whatever POSIXLY_CORRECT says); ':': a missing value is ':' */
    char shorts[8] = "-:";
    const char *words[8];
    int nwords = 0;
    unsigned seen = 0;
    char spelled[PMM_OPT_COUNT][ECHO_MAX + 8];
    int rc;

    memset(lo, 0, sizeof(lo));
    for (int id = 0; id < PMM_OPT_COUNT; id++) {
        lo[id].name = pmm_cli_opts[id].name;
        lo[id].has_arg = pmm_cli_opts[id].metavar ? required_argument
                                                  : no_argument;
        lo[id].val = 256 + id;
        if (pmm_cli_opts[id].short_name && strlen(shorts) < 6) {
            size_t k = strlen(shorts);
            shorts[k] = (char)pmm_cli_opts[id].short_name;
            shorts[k + 1] = '\0';
        }
    }
    /* the command, for the usage line of an error found before getopt
     * reaches it: the first word that names one */
    for (int i = 1; i < argc && usage_for == NULL; i++)
        if (strcmp(argv[i], "--") != 0)
            usage_for = pmm_ctl_cmd_by_name(argv[i]);
    opterr = 0;
    optind = 1;
    for (;;) {
        int li = -1, ch = getopt_long(argc, argv, shorts, lo, &li), id;
        char typed[ECHO_MAX + 8];

        if (ch == -1)
            break;
        if (ch == 1) {
            if (nwords == (int)(sizeof(words) / sizeof(words[0])))
                return usage_error("unexpected argument '%s'",
                                   shown(optarg));
            words[nwords++] = optarg;
            continue;
        }
        if (ch == '?') {
            if (optopt >= 256)
                return usage_error("option '--%s' takes no value",
                                   pmm_cli_opts[optopt - 256].name);
            if (optopt != 0)
                return usage_error("unknown option '-%c'",
                                   optopt >= 0x21 && optopt < 0x7f
                                       ? optopt : '?');
            return usage_error("unknown option '%s'",
                               shown(typed_opt(argv, false, typed,
                                               sizeof(typed))));
        }
        if (ch == ':')
            return usage_error("option '%s' needs a value",
                               shown(typed_opt(argv, false, typed,
                                               sizeof(typed))));
        id = -1;
        for (int k = 0; k < PMM_OPT_COUNT; k++)
            if (ch == 256 + k || ch == pmm_cli_opts[k].short_name)
                id = k;
        if (id < 0)
            return usage_error("unknown option");
        /* no abbreviations: a prefix that is unique today would change
         * meaning when a command gains an option */
        typed_opt(argv, lo[id].has_arg && optarg == argv[optind - 1],
                  typed, sizeof(typed));
        if (ch >= 256 && (strncmp(typed, "--", 2) != 0 ||
                          strcmp(typed + 2, pmm_cli_opts[id].name) != 0))
            return usage_error("unknown option '%s' (did you mean "
                               "--%s?)", shown(typed), pmm_cli_opts[id].name);
        snprintf(spelled[id], sizeof(spelled[id]), "%s", typed);
        seen |= PMM_OPT(id);
        rc = take_opt(c, id, typed, optarg != NULL ? optarg : "");
        if (rc >= 0)
            return rc;
    }
    if (c->version) {
        printf("pmgcm %s\n", PACKAGE_VERSION);
        return 0;
    }
    /* after "--": words only */
    for (; optind < argc; optind++) {
        if (nwords == (int)(sizeof(words) / sizeof(words[0])))
            return usage_error("unexpected argument '%s'",
                               shown(argv[optind]));
        words[nwords++] = argv[optind];
    }
    if (nwords == 0) {
        if (c->help) {
            usage(stdout);
            return 0;
        }
        return usage_error("%s", "no command given");
    }
    c->cmdname = words[0];
    c->cmd = pmm_ctl_cmd_by_name(c->cmdname);
    if (c->cmd == NULL)
        return usage_error("unknown command '%s'", shown(c->cmdname));
    usage_for = c->cmd;
    if (c->help) {
        usage_cmd(stdout, c->cmd);
        return 0;
    }
    for (int id = 0; id < PMM_OPT_COUNT; id++)
        if ((seen & PMM_OPT(id)) &&
            !((PMM_OPTS_GLOBAL | c->cmd->opts) & PMM_OPT(id)))
            return usage_error("%s: unknown option '%s'", c->cmdname,
                               shown(spelled[id]));
    for (int w = 1; w < nwords; w++) {
        if (c->npos >= c->cmd->max_pos)
            return usage_error("%s: unexpected argument '%s'", c->cmdname,
                               shown(words[w]));
        c->pos[c->npos++] = words[w];
    }
    if (c->npos < c->cmd->min_pos)
        return usage_error("%s: missing %s", c->cmdname, c->cmd->synopsis);
    if (c->host != NULL && c->cmd->id != PMM_CMD_STATUS)
        return usage_error("--host works with status only (%s changes a "
                           "node: run it there)", c->cmdname);
    if (c->host != NULL && c->sock_given)
        return usage_error("--host and --socket do not go together");
    if (c->token_file != NULL && c->host == NULL)
        return usage_error("--token-file goes with --host (the control "
                           "socket needs none)");
    return -1;
}

/* detach: no daemon; the database given by --db, else the one the
 * daemon's config names (--config, else $PMGCLUSTERD_CONFIG, else
 * /etc/pmgcm/pmgclusterd.conf) */
static int cmd_detach(const cli *c)
{
    static char report[4096], err[1024];
    static pmm_config cfg;
    const char *db = c->db;

    if (db != NULL && c->config != NULL)
        return usage_error("detach: --db and --config do not go together");
    if (db == NULL) {
        const char *path = c->config;
        if (path == NULL) path = getenv("PMGCLUSTERD_CONFIG");
        if (path == NULL || path[0] == '\0')
            path = "/etc/pmgcm/pmgclusterd.conf";
        if (pmm_config_load(&cfg, path, err, sizeof(err)) != 0) {
            fprintf(stderr, "pmgcm: detach: %s (give the database with "
                    "--db CONNINFO)\n", err);
            return 1;
        }
        if (cfg.db_conninfo[0] == '\0') {
            fprintf(stderr, "pmgcm: detach: %s sets no db_conninfo (give "
                    "the database with --db CONNINFO)\n", path);
            return 1;
        }
        db = cfg.db_conninfo;
    }
    int rc = pst_detach(db, c->force, report, sizeof(report), err,
                        sizeof(err));
    if (rc != 0) {
        char safe[1100];
        /* libpq's messages span lines: one line here */
        for (char *p = err; *p; p++)
            if (*p == '\n' || *p == '\t') *p = ' ';
        for (size_t n = strlen(err); n > 0 && err[n - 1] == ' ';) err[--n] = 0;
        term_safe(safe, sizeof(safe), err[0] ? err : pst_strerror(rc));
        if (c->json) {
            pmm_buf b;
            pmm_buf_init(&b, 1 << 16);
            if (json_text(&b, json_pack("{s:b, s:o}", "ok", 0, "error",
                                        pmm_jstrz(err))) == 0)
                write_json(b.p, b.len); /* json-pretty too */
            pmm_buf_free(&b);
        }
        fprintf(stderr, "pmgcm: detach: %s\n", safe);
        return 1;
    }
    if (c->json) {
        pmm_buf b;
        pmm_buf_init(&b, 1 << 16);
        rc = json_text(&b, json_pack("{s:b, s:o}", "ok", 1, "report",
                                     pmm_jstrz(report)));
        if (rc == 0) rc = write_json(b.p, b.len); /* json-pretty too */
        pmm_buf_free(&b);
        return rc;
    }
    fputs(report, stdout);
    return 0;
}

/* ---- step 2: each command's own argument checks, then the command ---------- */

static int run_status(cli *c) { return cmd_status(c); }
static int run_keygen(cli *c) { return cmd_keygen(c->json); }
static int run_create(cli *c) { return cmd_create(c); }
static int run_join_cmd(cli *c) { return cmd_join_cmd(c); }
static int run_promote(cli *c) { return cmd_promote(c); }
static int run_sync(cli *c) { return cmd_sync(c); }
static int run_drain(cli *c) { return cmd_drain(c, true); }
static int run_undrain(cli *c) { return cmd_drain(c, false); }
static int run_update_fp(cli *c) { return cmd_update_fp(c); }
static int run_detach(cli *c) { return cmd_detach(c); }

static int run_help(cli *c)
{
    const pmm_ctl_cmd *h;

    if (c->npos == 0) {
        usage(stdout);
        return fflush(stdout) == 0 ? 0 : 1;
    }
    h = pmm_ctl_cmd_by_name(c->pos[0]);
    if (h == NULL)
        return usage_error("help: unknown command '%s' (pmgcm help lists "
                           "them)", shown(c->pos[0]));
    usage_cmd(stdout, h);
    return fflush(stdout) == 0 ? 0 : 1;
}

static int run_join(cli *c)
{
    if (!target_ok(c->pos[0]))
        return usage_error("join: '%s' is not an IPv4 or IPv6 address "
                           "(with an optional port: IP:PORT, "
                           "[IPv6]:PORT)", shown(c->pos[0]));
    return cmd_join(c);
}

static int run_delete(cli *c)
{
    const char *s = c->pos[0];
    unsigned long v = 0;
    size_t n = strlen(s);

    if (n == 0 || n > 5 || strspn(s, "0123456789") != n ||
        (v = strtoul(s, NULL, 10)) < 1 || v > 65535)
        return usage_error("delete: bad cid '%s' (an integer from 1 to "
                           "65535)", shown(s));
    return cmd_delete(c, (unsigned)v);
}

static int run_backups(cli *c)
{
    /* backups [list] | backups clear ID|divergence */
    static const struct {
        const char *name;
        int args;
    } subs[] = {{"list", 0}, {"clear", 1}};
    const char *sub = c->npos > 0 ? c->pos[0] : "list";
    int want = -1;

    for (size_t k = 0; k < sizeof(subs) / sizeof(subs[0]); k++)
        if (strcmp(subs[k].name, sub) == 0)
            want = subs[k].args;
    if (want < 0)
        return usage_error("backups: unknown subcommand '%s' (list, "
                           "clear)", shown(sub));
    if (c->npos - 1 > want)
        return usage_error("backups %s: unexpected argument '%s'", sub,
                           shown(c->pos[c->npos - 1]));
    if (want == 1) {
        const char *id = c->npos > 1 ? c->pos[1] : "";
        size_t n = strlen(id);
        if (strcmp(id, "divergence") != 0 &&
            (n == 0 || n > 18 || strspn(id, "0123456789") != n))
            return usage_error("backups clear: '%s' is neither a backup "
                               "id (pmgcm backups lists them) nor "
                               "divergence", shown(id));
    }
    return cmd_backups(c);
}

static int run_files(cli *c)
{
    if (strcmp(c->pos[0], "publish") != 0)
        return usage_error("files: unknown subcommand '%s' (publish)",
                           shown(c->pos[0]));
    return cmd_files(c);
}

/* pmgcm's side of every command of the table, indexed by its id (NULL:
 * a wire-only request, sent as a step of another command). */
static int (*const cli_cmds[PMM_CMD_COUNT])(cli *c) = {
    [PMM_CMD_STATUS] = run_status,
    [PMM_CMD_CREATE] = run_create,
    [PMM_CMD_JOIN] = run_join,
    [PMM_CMD_JOIN_CMD] = run_join_cmd,
    [PMM_CMD_DELETE] = run_delete,
    [PMM_CMD_PROMOTE] = run_promote,
    [PMM_CMD_BACKUPS] = run_backups,
    [PMM_CMD_SYNC] = run_sync,
    [PMM_CMD_FILES] = run_files,
    [PMM_CMD_DRAIN] = run_drain,
    [PMM_CMD_UNDRAIN] = run_undrain,
    [PMM_CMD_UPDATE_FP] = run_update_fp,
    [PMM_CMD_DETACH] = run_detach,
    [PMM_CMD_KEYGEN] = run_keygen,
    [PMM_CMD_HELP] = run_help,
};

int main(int argc, char **argv)
{
    cli c = {0};
    int rc;

    c.sock = getenv("PMGCM_SOCKET");
    if (c.sock == NULL || c.sock[0] == '\0')
        c.sock = PMM_DEFAULT_SOCKET;
    /* every pmgcm word of the table has its function here */
    for (size_t i = 0; i < PMM_CMD_COUNT; i++)
        if (pmm_ctl_cmds[i].name != NULL && cli_cmds[i] == NULL)
            return fail("internal error: command '%s' has no function in "
                        "cli_cmds[]", pmm_ctl_cmds[i].name);
    rc = parse_args(&c, argc, argv);
    if (rc >= 0)
        return rc;
    return cli_cmds[c.cmd->id](&c);
}

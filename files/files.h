/*
 * files.h - mirrored config files (internal header of the membership
 * library, prefix pmm_files_): a directory of master-owned files (like
 * PMG's /etc/pmg) mirrored to every node of the cluster.
 *
 * The master scans its files_dir every PMM_FILES_SCAN_MS (on libuv's
 * thread pool) into a manifest: every regular file's relative path, size,
 * permission bits and SHA-256, sorted by path. The manifest's digest goes
 * into the cluster config (Config.files_digest, a version bump announced
 * like every config change). A node whose own files_dir does not scan to
 * the config's digest asks the master (node API over pinned TLS) for its
 * manifest (FILES) and for each missing or different file (FILE_GET, in
 * chunks of PMM_FILES_CHUNK), checks size and SHA-256, writes it
 * atomically (temp file in the same directory, fsync, rename, fsync of the
 * directory), removes the files the master no longer has, and then runs
 * files_reload (`/bin/sh -c`, PMM_FILES_RELOAD_TIMEOUT_MS at most). The
 * master's manifest is the truth: a file changed or removed locally on a
 * node is restored at the node's next scan.
 *
 * What is mirrored (the same rules on every node):
 *   - regular files, in files_dir and its subdirectories (at most
 *     PMM_FILES_DEPTH_MAX levels), at most PMM_FILES_COUNT_MAX files;
 *   - a relative path is at most PMM_FILES_NAME_MAX bytes; every
 *     component consists of [A-Za-z0-9._+@=,:-] and does not start with
 *     '.'; names that start with '.' or end in '~', ".tmp", ".swp" are
 *     silently left alone (dotfiles, editor and temp files; the node's own
 *     temp files are ".pmgcm-*.tmp");
 *   - symlinks, other special files and files with other names are not
 *     mirrored: an error names them (log and `pmgcm status` JSON);
 *   - a file over files_max_bytes is not mirrored (it is left out of the
 *     manifest, so nodes remove their copy) with an error naming it;
 *   - permission bits (0777) are mirrored, owners are not (files are
 *     written by the daemon's user); empty directories are not mirrored.
 * A scan that sees a file change while it reads it, or cannot read a file,
 * publishes nothing (the next scan retries): a manifest never half
 * describes the directory.
 *
 * Nothing is lost by mirroring:
 *   - every node keeps the last manifest it synced to (the master: the
 *     last one it published) in data_dir/files.manifest;
 *   - a file that mirroring removes or replaces with other content is
 *     first kept in the trash, data_dir/files-trash/<event>/<path> (a hard
 *     link when files_dir and data_dir share a filesystem, else a copy),
 *     one event directory per sync round; the trash is bounded by
 *     files_trash_max_files and files_trash_max_bytes: the oldest events
 *     are deleted first, the newest is always kept whole;
 *   - a node removes only files listed in the last manifest it synced to,
 *     or in one it began to sync to since (data_dir/files.pending, so a
 *     round cut short leaves nothing behind): a file no manifest it held
 *     ever listed is never removed ("unmanaged", named in the log and in
 *     status);
 *   - the master does not publish a manifest that drops most of the
 *     published one (pmm_files_mass_drop), nor any new manifest while it
 *     does not hold the published one (promoted with an unsynced
 *     files_dir): it holds it, says so in the log and status, and
 *     publishes it only when an admin confirms (`pmgcm files publish
 *     --confirm`); restoring the files ends the hold by itself;
 *   - promote is refused while files_dir is not in sync with the cluster's
 *     published manifest (pmm_files_promote_ready).
 */
#ifndef PMGCM_FILES_H
#define PMGCM_FILES_H

#include "membership/membership.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PMM_FILES_NAME_MAX 255       /* bytes of a relative path */
#define PMM_FILES_DEPTH_MAX 8        /* directory levels below files_dir */
#define PMM_FILES_COUNT_MAX 4096     /* files in a manifest */
#define PMM_FILES_SIZE_MAX (64u << 20) /* hard bound of any file */
#define PMM_FILES_CHUNK (4u << 20)   /* bytes per FILE_GET answer */
#define PMM_FILES_SCAN_MS 2000       /* scan period, master and nodes */
#define PMM_FILES_RETRY_MAX_MS 30000 /* back-off cap after a failed sync */
#define PMM_FILES_RELOAD_TIMEOUT_MS 120000 /* then the command is killed */
#define PMM_FILES_ERRORS_MAX 16      /* error lines kept for status */
#define PMM_FILES_ERROR_LEN 320
#define PMM_FILES_SERVE_MAX 16       /* FILE_GET reads in flight */
#define PMM_FILES_DROP_MIN 4         /* "most" of a manifest: at least this
                                      * many files and more than half */
#define PMM_FILES_MANIFEST_FILE "files.manifest" /* in data_dir */
#define PMM_FILES_PENDING_FILE "files.pending"   /* in data_dir */
#define PMM_FILES_TRASH_DIR "files-trash"        /* in data_dir */
#define PMM_FILES_TRASH_INFO ".pmgcm-event"      /* in each event dir */
#define PMM_FILES_TRASH_FILES 1000   /* default files_trash_max_files */
#define PMM_FILES_TRASH_BYTES (64u << 20) /* default files_trash_max_bytes */
#define PMM_FILES_NAMES_SHOWN 8      /* names listed in status and logs */

/* One file of a manifest. */
typedef struct pmm_file_ent {
    char name[PMM_FILES_NAME_MAX + 1];
    uint64_t size;
    uint32_t mode;               /* permission bits, & 0777 */
    uint8_t sha[PMM_HASH_LEN];
    bool oversize;               /* local scan of a node: over the limit,
                                  * not hashed (sha zero) */
    /* local scans only: what the SHA-256 was computed for (cache) */
    uint64_t dev, ino;
    int64_t mtime_ns, ctime_ns;
    bool cacheable;              /* not changed within the last seconds */
} pmm_file_ent;

typedef struct pmm_files_manifest {
    pmm_file_ent *ents;          /* owned; sorted by name (strcmp) */
    size_t n;
    uint64_t bytes;              /* sum of sizes */
    uint8_t digest[PMM_HASH_LEN];
} pmm_files_manifest;

/* Problems found by a scan (files not mirrored), for the log and status. */
typedef struct pmm_files_errs {
    char msg[PMM_FILES_ERRORS_MAX][PMM_FILES_ERROR_LEN];
    size_t n;                    /* kept */
    size_t total;                /* found (n <= total) */
} pmm_files_errs;

/* ---- pure functions (tests/unit/test_files.c) --------------------------- */

/* A canonical relative path: 1..PMM_FILES_NAME_MAX bytes, components
 * separated by single '/', each from [A-Za-z0-9._+@=,:-], none starting
 * with '.' or being skipped (pmm_files_name_skipped), at most
 * PMM_FILES_DEPTH_MAX + 1 components. */
bool pmm_files_name_ok(const char *name);
/* A directory entry left alone silently: ".*", "*~", "*.tmp", "*.swp". */
bool pmm_files_name_skipped(const char *base);
/* The digest of n entries in the given order (names, sizes, modes,
 * SHA-256s; the cache fields do not count). */
void pmm_files_digest(const pmm_file_ent *e, size_t n,
                      uint8_t out[PMM_HASH_LEN]);
/* Sorts m by name, refuses a name twice (-EINVAL), sums the sizes and
 * computes the digest. */
int pmm_files_manifest_finish(pmm_files_manifest *m);
/* Binary search by name, or NULL. */
const pmm_file_ent *pmm_files_find(const pmm_files_manifest *m,
                                   const char *name);
/* Deep copy into dst (cleared first). 0 or -ENOMEM. */
int pmm_files_manifest_copy(pmm_files_manifest *dst,
                            const pmm_files_manifest *src);
void pmm_files_manifest_clear(pmm_files_manifest *m);
/* What a node does to turn local into remote: *fetch gets indexes into
 * remote->ents (missing locally, or size, content or mode differ; an
 * oversize local copy always differs), *del indexes into local->ents (not
 * in remote). Both malloc'ed (the caller frees; NULL when empty). 0 or
 * -ENOMEM. */
int pmm_files_diff(const pmm_files_manifest *local,
                   const pmm_files_manifest *remote, size_t **fetch,
                   size_t *n_fetch, size_t **del, size_t *n_del);

/* The mass-drop rule: *dropped = how many names of prev are not in next.
 * True ("most of it") when *dropped >= PMM_FILES_DROP_MIN and more than
 * half of prev's files are dropped. */
bool pmm_files_mass_drop(const pmm_files_manifest *prev,
                         const pmm_files_manifest *next, size_t *dropped);
/* out = every entry of b, and those of a whose names b does not have
 * (sorted, digest computed). 0, -E2BIG (more than PMM_FILES_COUNT_MAX),
 * -ENOMEM; out written only on success. */
int pmm_files_manifest_union(pmm_files_manifest *out,
                             const pmm_files_manifest *a,
                             const pmm_files_manifest *b);
/* Trash eviction: n events, oldest first, with their file counts and
 * bytes. Returns how many of the oldest to delete so that the rest holds
 * at most max_files files and max_bytes bytes; the newest event is never
 * evicted (it is kept whole even when it alone is over a bound). */
size_t pmm_files_trash_evict(const uint64_t *files, const uint64_t *bytes,
                             size_t n, uint64_t max_files,
                             uint64_t max_bytes);
/* The text form of a manifest (data_dir/files.manifest):
 *   pmgcm-files-manifest 1
 *   digest <64 hex>
 *   <sha256 hex> <size> <mode, octal> <name>      (one line per file)
 * Appended to b. */
int pmm_files_manifest_format(const pmm_files_manifest *m, pmm_buf *b);
/* Reads that form back, checked like a FILES answer (canonical names in
 * ascending order, bounds, the digest matches the entries). out written
 * only on success. 0 or -EINVAL with a reason. */
int pmm_files_manifest_parse(pmm_files_manifest *out, const char *text,
                             size_t len, char *err, size_t errlen);

/* The FILES answer: m's entries into resp (pointers into m: keep m alive
 * until resp is packed; free with pmm_files_resp_free). 0 or -ENOMEM. */
struct Pmgcm__Cluster__Response;
int pmm_files_to_resp(const pmm_files_manifest *m,
                      struct Pmgcm__Cluster__Response *resp);
void pmm_files_resp_free(struct Pmgcm__Cluster__Response *resp);
/* Reads and checks a FILES answer from the network: at most
 * PMM_FILES_COUNT_MAX entries, canonical names in strictly ascending
 * order, sizes <= PMM_FILES_SIZE_MAX, modes <= 0777, 32-byte hashes, and
 * a digest that matches the entries. out written only on success. 0 or
 * -EINVAL with a reason. */
int pmm_files_from_resp(pmm_files_manifest *out,
                        const struct Pmgcm__Cluster__Response *resp,
                        char *err, size_t errlen);

/* ---- disk (blocking: a worker thread, or tests) -------------------------- */

/* Scans dir (see the rules above) into out (sorted, digest computed).
 * prev (may be NULL) is an earlier scan of the same dir whose SHA-256s are
 * reused for files whose device, inode, size, mtime and ctime did not
 * change. node_side: files over max_bytes are listed as oversize instead
 * of reported, and stale ".pmgcm-*.tmp" files are removed. Problems that
 * leave a file out are added to errs. 0; -ENOENT (dir missing); -EAGAIN (a
 * file changed while it was read); -E2BIG (too many files); -errno (a file
 * could not be read). out written only on success; errs may hold the
 * reason of a failure. */
int pmm_files_scan(const char *dir, uint32_t max_bytes, bool node_side,
                   const pmm_files_manifest *prev, pmm_files_manifest *out,
                   pmm_files_errs *errs);
/* Writes dir/name (a canonical name; missing directories are created
 * 0755, a non-directory in their way is removed, symlinks are never
 * followed) atomically: .pmgcm-*.tmp in the same directory, fsync, rename,
 * fsync of the directory. 0 or -errno. */
int pmm_files_write(const char *dir, const char *name, const void *data,
                    size_t len, uint32_t mode);
/* Removes dir/name (missing is fine) and the directories this leaves
 * empty, up to dir. 0 or -errno. */
int pmm_files_remove(const char *dir, const char *name);
/* data_dir/<file> (PMM_FILES_MANIFEST_FILE, PMM_FILES_PENDING_FILE) in
 * the text form: saved atomically (mode 0600); load gives -ENOENT when
 * there is none, -EINVAL (with a reason) when it is corrupt. */
int pmm_files_manifest_save(const char *data_dir, const char *file,
                            const pmm_files_manifest *m);
int pmm_files_manifest_load(const char *data_dir, const char *file,
                            pmm_files_manifest *out, char *err,
                            size_t errlen);
/* Keeps the regular file dir/name in the trash event directory event
 * (created 0700 with its parents as needed): a hard link, or a copy when
 * the two are on different filesystems (-EFBIG when that copy would be
 * over max_copy bytes). Appends "<why> <name>" to event/.pmgcm-event.
 * 1 (kept), 0 (dir/name is gone or not a regular file: nothing to keep)
 * or -errno. */
int pmm_files_trash_keep(const char *dir, const char *name,
                         const char *event, const char *why,
                         uint64_t max_copy);
typedef struct pmm_files_trash_stats {
    uint64_t events, files, bytes; /* what the trash holds */
    uint64_t evicted;              /* events deleted by this call */
    char newest[64];               /* name of the newest event, or "" */
} pmm_files_trash_stats;
/* Deletes the oldest events of the trash directory until it holds at
 * most max_files files and max_bytes bytes (pmm_files_trash_evict) and
 * counts what is left. A missing directory is empty. 0 or -errno. */
int pmm_files_trash_tidy(const char *trash, uint64_t max_files,
                         uint64_t max_bytes, pmm_files_trash_stats *st);

/* Reads up to len bytes of dir/name at off into buf (*got); -ESTALE when
 * the file is no longer a regular file of want_size bytes. */
int pmm_files_read_chunk(const char *dir, const char *name, uint64_t off,
                         uint8_t *buf, size_t len, uint64_t want_size,
                         size_t *got);

/* ---- the daemon's mirror (loop thread) ----------------------------------- */
typedef struct pmm_files pmm_files;

typedef struct pmm_files_env {
    struct uv_loop_s *loop;
    const pmm_config *cfg;       /* files_dir, files_reload, files_max_bytes,
                                  * files_trash_max_*, data_dir */
    pmm_lc *lc;                  /* must outlive the pmm_files (close first) */
    pmm_api *api;                /* the node API: FILES and FILE_GET are
                                  * served there; must outlive the pmm_files */
    gsp_id node_id;
    void (*changed)(void *ud);   /* in sync or not: may be NULL */
    void *ud;
} pmm_files_env;

/* Starts the mirror when cfg->files_dir is set: registers the FILES /
 * FILE_GET handler with the node API and scans at once. Else *out = NULL,
 * 0, and those requests are refused ("no mirrored files on this node"). */
int pmm_files_start(pmm_files **out, const pmm_files_env *env, char *err,
                    size_t errlen);
/* The cluster config changed: check now. NULL is fine. */
void pmm_files_kick(pmm_files *f);
/* The mirror's state as a new JSON object (the status' "files"); NULL
 * for f NULL or out of memory. */
json_t *pmm_files_status(const pmm_files *f);
/* Whether this node's files_dir holds the cluster's published manifest
 * (every file of it; files never listed may be there too): 0, or
 * -EAGAIN with the reason in why. Promote asks this; f NULL (no
 * files_dir on this node) is ready only while the cluster publishes no
 * files. */
int pmm_files_promote_ready(const pmm_files *f, const pmm_cluster *cl,
                            char *why, size_t len);
/* The first 8 bytes (big endian) of the published digest this node's
 * files_dir is in sync with, for the gossiped metadata; 0 when it is not
 * in sync (or f is NULL). */
uint64_t pmm_files_sync_tag(const pmm_files *f);
/* The tag of a digest (what pmm_files_sync_tag compares with). */
uint64_t pmm_files_digest_tag(const uint8_t digest[PMM_HASH_LEN]);
/* `pmgcm files publish [--confirm]` (control request "files-publish"):
 * on the master, publishes the manifest it holds for confirmation, once
 * the next scan finds the directory as it was when held. Answers req
 * (now, or after that scan). f NULL answers that there is no files_dir. */
void pmm_files_ctl_publish(pmm_files *f, pmm_ctl_req *req, bool confirm);
/* Unregisters from the node API, stops; frees f once its work is done. A running
 * reload command is left to finish. NULL is fine. */
void pmm_files_close(pmm_files *f);

#endif

/*
 * meta.c - NodeMeta encode/decode with validation.
 */
#include "membership/membership.h"
#include "membership/meta.pb-c.h"

#include <errno.h>
#include <string.h>

/* 1-minute load above this is garbage, not a busy host */
#define LOAD1_MAX (1000000u * 100u)

static bool reason_ok(const char *r, size_t n)
{
    if (n > PMM_DB_REASON_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)r[i] < 0x20 || (unsigned char)r[i] >= 0x7f)
            return false;
    return true;
}

static bool role_ok(const char *r, size_t n)
{
    if (n == 0 || n > PMM_ROLE_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)r[i] <= 0x20 || (unsigned char)r[i] >= 0x7f)
            return false;
    return true;
}

int pmm_meta_encode(const pmm_meta *m, uint8_t *buf, size_t cap, size_t *len)
{
    Pmgcm__Membership__NodeMeta nm = PMGCM__MEMBERSHIP__NODE_META__INIT;
    size_t need;

    if (m->mem_pct > 100 || m->disk_pct > 100 || m->load1 > LOAD1_MAX ||
        !role_ok(m->role, strnlen(m->role, sizeof(m->role))))
        return -EINVAL;
    nm.start_time = m->start_time;
    nm.load1 = m->load1;
    nm.mem_pct = m->mem_pct;
    nm.disk_pct = m->disk_pct;
    nm.has_cid = true;
    nm.cid = m->cid;
    nm.role = (char *)m->role;
    nm.has_cfg_epoch = nm.has_cfg_version = true;
    nm.cfg_epoch = m->cfg_epoch;
    nm.cfg_version = m->cfg_version;
    if (m->db_state) {
        nm.has_db_state = nm.has_db_epoch = nm.has_db_seq = true;
        nm.has_db_ts_ms = true;
        nm.db_state = m->db_state;
        nm.db_epoch = m->db_epoch;
        nm.db_seq = m->db_seq;
        nm.db_ts_ms = m->db_ts_ms;
    }
    if (m->db_state) {
        size_t rl = strnlen(m->db_reason, sizeof(m->db_reason));
        if (rl == sizeof(m->db_reason) || !reason_ok(m->db_reason, rl))
            return -EINVAL;
        if (rl) nm.db_reason = (char *)m->db_reason;
        nm.has_db_lag = nm.has_db_kept = nm.has_db_divergence = true;
        nm.has_db_loaded = true;
        nm.db_loaded = m->db_loaded;
        nm.db_lag = m->db_lag;
        nm.db_kept = m->db_kept;
        nm.db_divergence = m->db_divergence;
    }
    Pmgcm__Membership__OriginSeq ov[PMM_META_ORIGINS_MAX];
    Pmgcm__Membership__OriginSeq *op[PMM_META_ORIGINS_MAX];
    if (m->n_origins > PMM_META_ORIGINS_MAX)
        return -EINVAL;
    for (uint32_t i = 0; i < m->n_origins; i++) {
        pmgcm__membership__origin_seq__init(&ov[i]);
        ov[i].cid = m->origins[i].cid;
        ov[i].seq = m->origins[i].seq;
        op[i] = &ov[i];
    }
    if (m->files_sync) {
        nm.has_files_sync = true;
        nm.files_sync = m->files_sync;
    }
    nm.n_origins = m->n_origins;
    nm.origins = op;
    /* 0..0: no range given (read back as 1..1, as an old build) */
    if (m->proto_min != 0 || m->proto_max != 0) {
        if (m->proto_min == 0 || m->proto_max < m->proto_min)
            return -EINVAL;
        nm.has_proto_min = nm.has_proto_max = true;
        nm.proto_min = m->proto_min;
        nm.proto_max = m->proto_max;
    }
    {
        size_t bl = strnlen(m->build, sizeof(m->build));
        if (bl == sizeof(m->build) || !reason_ok(m->build, bl))
            return -EINVAL;
        if (bl) nm.build = (char *)m->build;
    }
    need = pmgcm__membership__node_meta__get_packed_size(&nm);
    if ((need > cap || need > GSP_META_MAX) && nm.db_reason != NULL) {
        /* the reason is the first thing to go */
        nm.db_reason = NULL;
        need = pmgcm__membership__node_meta__get_packed_size(&nm);
    }
    if (need > cap || need > GSP_META_MAX)
        return -ENOSPC;
    *len = pmgcm__membership__node_meta__pack(&nm, buf);
    return 0;
}

int pmm_meta_decode(pmm_meta *out, const uint8_t *buf, size_t len)
{
    Pmgcm__Membership__NodeMeta *nm;
    pmm_meta m;
    int rc = GSP_EDECODE;

    if (buf == NULL || len == 0 || len > GSP_META_MAX)
        return GSP_EDECODE;
    nm = pmgcm__membership__node_meta__unpack(NULL, len, buf);
    if (nm == NULL)
        return GSP_EDECODE;
    memset(&m, 0, sizeof(m));
    if (nm->mem_pct > 100 || nm->disk_pct > 100 || nm->load1 > LOAD1_MAX)
        goto out;
    m.start_time = nm->start_time;
    m.load1 = nm->load1;
    m.mem_pct = nm->mem_pct;
    m.disk_pct = nm->disk_pct;
    m.cid = nm->has_cid ? nm->cid : 0;
    m.cfg_epoch = nm->has_cfg_epoch ? nm->cfg_epoch : 0;
    m.cfg_version = nm->has_cfg_version ? nm->cfg_version : 0;
    m.db_state = nm->has_db_state && nm->db_state < 64 ? nm->db_state : 0;
    m.db_epoch = nm->has_db_epoch ? nm->db_epoch : 0;
    m.db_seq = nm->has_db_seq ? nm->db_seq : 0;
    m.db_ts_ms = nm->has_db_ts_ms ? nm->db_ts_ms : 0;
    if (nm->db_reason != NULL) {
        size_t n = strlen(nm->db_reason);
        if (!reason_ok(nm->db_reason, n))
            goto out;
        memcpy(m.db_reason, nm->db_reason, n + 1);
    }
    m.db_lag = nm->has_db_lag ? nm->db_lag : 0;
    m.db_kept = nm->has_db_kept ? nm->db_kept : 0;
    m.db_divergence = nm->has_db_divergence ? nm->db_divergence : 0;
    m.db_loaded = nm->has_db_loaded && nm->db_loaded;
    m.files_sync = nm->has_files_sync ? nm->files_sync : 0;
    /* no range: a build from before versioning, protocol 1 */
    m.proto_min = nm->has_proto_min ? nm->proto_min : 1;
    m.proto_max = nm->has_proto_max ? nm->proto_max : m.proto_min;
    if (m.proto_min == 0 || m.proto_max < m.proto_min)
        goto out;
    if (nm->build != NULL) {
        size_t n = strlen(nm->build);
        if (n > PMM_BUILD_VERSION_MAX || !reason_ok(nm->build, n))
            goto out;
        memcpy(m.build, nm->build, n + 1);
    }
    if (nm->n_origins > PMM_META_ORIGINS_MAX)
        goto out;
    m.n_origins = (uint32_t)nm->n_origins;
    for (size_t i = 0; i < nm->n_origins; i++) {
        m.origins[i].cid = nm->origins[i]->cid;
        m.origins[i].seq = nm->origins[i]->seq;
    }
    if (nm->role != NULL) {
        size_t n = strlen(nm->role);
        if (!role_ok(nm->role, n))
            goto out;
        memcpy(m.role, nm->role, n + 1);
    } else {
        strcpy(m.role, "-");
    }
    *out = m;
    rc = 0;
out:
    pmgcm__membership__node_meta__free_unpacked(nm, NULL);
    return rc;
}

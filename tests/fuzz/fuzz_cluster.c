/*
 * fuzz_cluster.c - node-to-node frames (membership/cluster.proto): the
 * input is unpacked as a Request, a Response, an Announce and a Config;
 * every embedded Config goes through pmm_cluster_from_pb (the validation a
 * daemon applies before it trusts a config), the image itself through
 * pmm_cluster_decode with and without required keys. A config that is
 * accepted must survive encode -> decode unchanged in (epoch, version),
 * nodes and keys, and validate again.
 */
#include "tests/fuzz/fuzz.h"
#include "membership/membership.h"
#include "membership/cluster.pb-c.h"

#include <stdio.h>
#include <stdlib.h>

static size_t sink;

static void check_model(const pmm_cluster *c, bool need_keys)
{
    char err[256];
    if (pmm_cluster_validate(c, need_keys, err, sizeof(err)) != 0) abort();
    for (size_t i = 0; i < c->n_nodes; i++) {
        const pmm_cnode *nd = &c->nodes[i];
        sink += strlen(nd->name) + strlen(nd->ip) + strlen(nd->fp);
        if (pmm_cluster_by_cid(c, nd->cid) == NULL) abort();
        if (!pmm_ip_literal_ok(nd->ip)) abort();
    }
    sink += (size_t)(pmm_cluster_master(c) != NULL);
    uint8_t *buf = NULL;
    size_t len = 0;
    if (pmm_cluster_encode(c, true, &buf, &len) != 0) abort();
    pmm_cluster again;
    memset(&again, 0, sizeof(again));
    if (pmm_cluster_decode(&again, buf, len, need_keys, err, sizeof(err))) {
        fprintf(stderr, "re-decode failed: %s\n", err);
        abort();
    }
    if (pmm_cluster_cmp(c, &again) != 0 || again.n_nodes != c->n_nodes ||
        again.n_keys != c->n_keys ||
        memcmp(again.keys, c->keys, sizeof(c->keys)) != 0)
        abort();
    pmm_cluster copy;
    memset(&copy, 0, sizeof(copy));
    if (pmm_cluster_copy(&copy, &again) == 0) pmm_cluster_clear(&copy);
    pmm_cluster_clear(&again);
    free(buf);
}

static void from_pb(const Pmgcm__Cluster__Config *pb)
{
    if (!pb) return;
    char err[256];
    for (int keys = 0; keys < 2; keys++) {
        pmm_cluster c;
        memset(&c, 0, sizeof(c));
        if (pmm_cluster_from_pb(&c, pb, keys, err, sizeof(err)) == 0) {
            check_model(&c, keys);
            pmm_cluster_clear(&c);
        } else {
            sink += strlen(err);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    for (int keys = 0; keys < 2; keys++) {
        pmm_cluster c;
        memset(&c, 0, sizeof(c));
        if (pmm_cluster_decode(&c, data, size, keys, err, sizeof(err)) == 0) {
            check_model(&c, keys);
            pmm_cluster_clear(&c);
        } else {
            sink += strlen(err);
        }
    }

    Pmgcm__Cluster__Request *rq =
        pmgcm__cluster__request__unpack(NULL, size, data);
    if (rq) {
        from_pb(rq->config);
        if (rq->join) {
            sink += strlen(rq->join->password) + strlen(rq->join->name) +
                    rq->join->node_id.len;
            sink += (size_t)pmm_ip_literal_ok(rq->join->ip);
        }
        if (rq->file_name) sink += strlen(rq->file_name);
        sink += rq->has_store ? rq->store.len : 0;
        pmgcm__cluster__request__free_unpacked(rq, NULL);
    }

    Pmgcm__Cluster__Response *rs =
        pmgcm__cluster__response__unpack(NULL, size, data);
    if (rs) {
        from_pb(rs->config);
        if (rs->error) sink += strlen(rs->error);
        for (size_t i = 0; i < rs->n_files; i++)
            sink += strlen(rs->files[i]->name) + rs->files[i]->sha256.len;
        pmgcm__cluster__response__free_unpacked(rs, NULL);
    }

    Pmgcm__Cluster__Announce *an =
        pmgcm__cluster__announce__unpack(NULL, size, data);
    if (an) {
        sink += an->cluster_id.len + an->epoch + an->version;
        pmgcm__cluster__announce__free_unpacked(an, NULL);
    }
    return 0;
}

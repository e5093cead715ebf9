/*
 * fuzz_config.c - the configuration file parser (membership/config.c,
 * pmm_config_parse): any bytes are either accepted or refused with a
 * message, and a refused file leaves the caller's config untouched; an
 * accepted one, reloaded over the defaults, moves exactly its live keys.
 */
#include "tests/fuzz/fuzz.h"
#include "membership/membership.h"

#include <stdlib.h>

static size_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pmm_config *cfg = malloc(sizeof(*cfg));
    pmm_config *before = malloc(sizeof(*before));
    if (!cfg || !before) abort();
    memset(cfg, 0, sizeof(*cfg));
    pmm_config_default(cfg);
    memcpy(before, cfg, sizeof(*cfg));
    char err[256] = "";
    int rc = pmm_config_parse(cfg, (const char *)data, size, err, sizeof(err));
    if (rc == 0) {
        if (strnlen(cfg->name, sizeof(cfg->name)) == sizeof(cfg->name) ||
            strnlen(cfg->data_dir, sizeof(cfg->data_dir)) == sizeof(cfg->data_dir) ||
            strnlen(cfg->label, sizeof(cfg->label)) == sizeof(cfg->label) ||
            strnlen(cfg->db_conninfo, sizeof(cfg->db_conninfo)) ==
                sizeof(cfg->db_conninfo) ||
            cfg->n_peers > PMM_PEERS_MAX)
            abort();
        sink += strlen(cfg->name) + cfg->n_peers + cfg->gossip.packet_size;
        /* a reload from the defaults to this file: the live keys move, the
         * others stay, and what is left differs only in restart keys */
        {
            size_t nk;
            const pmm_conf_key *t = pmm_config_keys(&nk);
            uint64_t live = 0, changed;
            for (size_t i = 0; i < nk; i++)
                if (t[i].flags & PMM_CONF_LIVE)
                    live |= UINT64_C(1) << i;
            changed = pmm_config_apply_live(before, cfg);
            if (changed != (pmm_config_diff(before, cfg) | (changed & live)) ||
                (pmm_config_diff(before, cfg) & live) != 0)
                abort();
        }
    } else {
        if (err[0] == '\0' || memchr(err, 0, sizeof(err)) == NULL) abort();
        if (memcmp(cfg, before, sizeof(*cfg)) != 0) abort();
        sink += strlen(err);
    }
    free(cfg);
    free(before);
    return 0;
}

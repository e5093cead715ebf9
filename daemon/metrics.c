/*
 * metrics.c - /metrics of the status port: one table of every metric
 * {name, type, help, label, getter}, written in Prometheus text format
 * 0.0.4 (daemon.h, pmm_metrics_*). test_metrics holds pmgclusterd(8) to
 * the table; test_http and tests/integration/haproxy.sh (promtool check
 * metrics) read the output.
 *
 * Replication figures (pmgcm_db_*) are written only when the node has a
 * database (PMM_METRIC_DB): never made-up zeros.
 */
#include "daemon/daemon.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

/* Getters: sample i (the i-th label value) of the view into *o; false
 * leaves the metric out. One line each. */
#define GET(fn, expr)                                                         \
    static bool fn(const pmm_metric_in *in, size_t i, pmm_metric_val *o)      \
    {                                                                         \
        const pmm_http_view *v = in->v;                                       \
        (void)i;                                                              \
        (void)v;                                                              \
        o->u = (uint64_t)(expr);                                              \
        return true;                                                          \
    }
/* the i-th of a list of values (one per label value) */
#define NTH(...) ((const uint64_t[]){__VA_ARGS__})[i]

/* the node and its cluster config */
GET(g_build_info, 1)
GET(g_start_time, v->start_time > 0 ? v->start_time : 0)
GET(g_ready, in->ready ? 1 : 0)
GET(g_draining, v->draining ? 1 : 0)
GET(g_in_cluster, v->in_cluster ? 1 : 0)
GET(g_master, v->is_master ? 1 : 0)
GET(g_cid, v->cid)
GET(g_cluster_nodes, NTH(v->n_alive, v->n_suspect, v->n_dead, v->n_left))
GET(g_epoch, v->epoch)
GET(g_version, v->version)
GET(g_synced, v->in_cluster && (v->config_synced || v->is_master) ? 1 : 0)
GET(g_master_cid, v->master_cid)
/* the replicated database */
GET(g_db_in_sync, v->db_in_sync ? 1 : 0)
GET(g_db_position, v->db_seq)
GET(g_db_head, v->db_head_seq)
GET(g_db_lag, v->db_head_seq > v->db_seq ? v->db_head_seq - v->db_seq : 0)
static bool g_db_lag_seconds(const pmm_metric_in *in, size_t i,
                             pmm_metric_val *o)
{
    (void)i;
    o->d = in->v->db_lag_seconds;
    return true;
}
GET(g_db_applied, v->db_applied)
GET(g_db_captured, v->db_captured)
GET(g_db_frames_direct, v->db_frames_direct)
GET(g_db_snapshots, v->db_snapshots)
GET(g_db_divergent, v->db_divergent)
GET(g_db_capturing, v->db_capturing ? 1 : 0)
GET(g_db_wal_retained, v->db_wal_retained > 0 ? v->db_wal_retained : 0)
static bool g_db_slot_safe(const pmm_metric_in *in, size_t i,
                           pmm_metric_val *o)
{
    (void)i;
    if (in->v->db_slot_safe < 0)
        return false; /* unbounded (max_slot_wal_keep_size = -1) */
    o->u = (uint64_t)in->v->db_slot_safe;
    return true;
}
GET(g_db_slot_repairs, v->db_slot_repairs)
GET(g_db_sync_need, v->db_sync_need)
GET(g_db_sync_have, v->db_sync_have)
GET(g_db_sync_waiting, v->db_sync_waiting)
/* the gossip layer */
GET(g_members, v->gossip_members)
GET(g_local_health, v->local_health)
GET(g_probes, v->gossip.probes)
GET(g_probe_fails, v->gossip.probe_fails)
GET(g_indirect, v->gossip.indirect_probes)
GET(g_tcp_fallback, v->gossip.tcp_fallback_probes)
GET(g_suspicions, v->gossip.suspicions)
GET(g_refutations, v->gossip.refutations)
GET(g_deaths, v->gossip.deaths_declared)
GET(g_udp_in, v->gossip.udp_in)
GET(g_udp_out, v->gossip.udp_out)
GET(g_bytes_in, v->gossip.bytes_in)
GET(g_bytes_out, v->gossip.bytes_out)
GET(g_streams, NTH(v->gossip.streams_in, v->gossip.streams_out))
GET(g_stream_failures, v->gossip.stream_failures)
GET(g_dropped, NTH(v->gossip.drop_decrypt, v->gossip.drop_decode,
                   v->gossip.drop_toobig, v->gossip.drop_self,
                   v->gossip.drop_other, v->gossip.drop_replay,
                   v->gossip.drop_misdirected))
GET(g_acks_ignored, v->gossip.acks_ignored)
GET(g_updates_sent, v->gossip.updates_sent)
GET(g_user_msgs, v->gossip.user_msgs_delivered)
/* the status and agent ports */
GET(g_http_open, v->http.open)
GET(g_http_conns, v->http.connections)
GET(g_http_requests, v->http.requests)
GET(g_http_bad, v->http.bad_requests)
GET(g_http_timeouts, v->http.timeouts)
GET(g_http_evicted, v->http.evicted)
GET(g_http_rejected, v->http.rejected)
GET(g_http_denied, v->http.denied)
GET(g_agent_conns, v->agent.connections)
GET(g_agent_evicted, v->agent.evicted)
/* unauthenticated input: the memory budget, the node API, joins */
GET(g_budget_limit, v->budget.limit)
GET(g_budget_used, v->budget.used)
GET(g_budget_peak, v->budget.peak)
GET(g_api_handshakes, v->api_handshakes)
GET(g_api_hs_evicted, v->api_handshakes_evicted)
GET(g_api_hs_timeouts, v->api_handshake_timeouts)
GET(g_api_dropped, v->api_dropped)
GET(g_api_streams, v->api_node_streams)
GET(g_api_streams_max, v->api_streams_max)
GET(g_api_joiners, v->api_joiners)
GET(g_join_wrong, v->join_failures)
GET(g_join_refused, NTH(v->join_refused_busy, v->join_refused_global,
                        v->join_refused_full))
GET(g_join_budget, v->join_budget_left)
GET(g_budget_refused, v->budget.refused)

#undef GET
#undef NTH

static const char *const v_version[] = {pmm_build_version, NULL};
static const char *const v_state[] = {"alive", "suspect", "dead", "left",
                                      NULL};
static const char *const v_direction[] = {"in", "out", NULL};
static const char *const v_reason[] = {"decrypt", "decode", "too_big",
                                       "self", "other", "replay",
                                       "misdirected", NULL};
static const char *const v_join[] = {"busy", "budget", "full", NULL};

#define G "gauge"
#define C "counter"
#define DB PMM_METRIC_DB

/* In the order they are written. */
static const pmm_metric metrics[] = {
    /* the node and its cluster config */
    {"pmgcm_build_info", G,
     "Always 1; the version of pmgclusterd in a label.", "version",
     v_version, 0, g_build_info},
    {"process_start_time_seconds", G,
     "Start time of pmgclusterd since the Unix epoch in seconds.", NULL,
     NULL, 0, g_start_time},
    {"pmgcm_node_ready", G,
     "1 when /readyz answers 200 (takes traffic), else 0.", NULL, NULL, 0,
     g_ready},
    {"pmgcm_node_draining", G,
     "1 while the node is drained (pmgcm drain), else 0.", NULL, NULL, 0,
     g_draining},
    {"pmgcm_node_in_cluster", G,
     "1 when the node is in a created or joined cluster, else 0.", NULL,
     NULL, 0, g_in_cluster},
    {"pmgcm_node_master", G,
     "1 when this node is the cluster's master, else 0.", NULL, NULL, 0,
     g_master},
    {"pmgcm_node_cid", G, "This node's cluster id (cid), 0 outside a cluster.",
     NULL, NULL, 0, g_cid},
    {"pmgcm_cluster_nodes", G,
     "The cluster's nodes as this node sees them, by state.", "state",
     v_state, 0, g_cluster_nodes},
    {"pmgcm_cluster_config_epoch", G,
     "Epoch of the cluster config this node holds (bumped by promote).", NULL,
     NULL, 0, g_epoch},
    {"pmgcm_cluster_config_version", G,
     "Version of the cluster config this node holds.", NULL, NULL, 0,
     g_version},
    {"pmgcm_cluster_config_synced", G,
     "1 when this node holds the newest config announced, else 0.", NULL,
     NULL, 0, g_synced},
    {"pmgcm_cluster_master_cid", G,
     "The master's cid in the config this node holds (0: none).", NULL, NULL,
     0, g_master_cid},

    /* the replicated database (only when the node has one) */
    {"pmgcm_db_in_sync", G,
     "1 when the replicated database is loaded and caught up.", NULL, NULL,
     DB, g_db_in_sync},
    {"pmgcm_db_position", G, "Sequence number of the last change applied here.",
     NULL, NULL, DB, g_db_position},
    {"pmgcm_db_head_position", G,
     "Newest change sequence number known from the upstream.", NULL, NULL, DB,
     g_db_head},
    {"pmgcm_db_lag_changes", G,
     "Changes known upstream and not yet applied here.", NULL, NULL, DB,
     g_db_lag},
    {"pmgcm_db_lag_seconds", G,
     "Capture time of the newest upstream change minus that of the last "
     "applied one.", NULL, NULL, DB | PMM_METRIC_SECONDS, g_db_lag_seconds},
    {"pmgcm_db_changes_applied_total", C,
     "Changes applied from the upstream since start.", NULL, NULL, DB,
     g_db_applied},
    {"pmgcm_db_changes_captured_total", C,
     "Changes numbered here as master since start.", NULL, NULL, DB,
     g_db_captured},
    {"pmgcm_db_frames_direct_total", C,
     "Change frames sent to followers at the head as the capture committed "
     "them, without a read of the change log (master, since start).", NULL,
     NULL, DB, g_db_frames_direct},
    {"pmgcm_db_snapshots_total", C,
     "Snapshots loaded into this node's database (ever).", NULL, NULL, DB,
     g_db_snapshots},
    {"pmgcm_db_divergent_changes_total", C,
     "Changes recorded in pmgcm.divergence since start.", NULL, NULL, DB,
     g_db_divergent},
    {"pmgcm_db_capture_streaming", G,
     "1 while the capture streams this node's replication slot.", NULL, NULL,
     DB, g_db_capturing},
    {"pmgcm_db_slot_retained_wal_bytes", G,
     "WAL the node's replication slot holds back (bytes).", NULL, NULL, DB,
     g_db_wal_retained},
    {"pmgcm_db_slot_safe_wal_bytes", G,
     "WAL that may still be written before the slot is lost "
     "(max_slot_wal_keep_size).", NULL, NULL, DB, g_db_slot_safe},
    {"pmgcm_db_slot_repairs_total", C,
     "Replication slots found lost or missing and re-made (each a resync).",
     NULL, NULL, DB, g_db_slot_repairs},
    {"pmgcm_db_sync_followers_needed", G,
     "db_sync: followers that must hold a change before its commit returns "
     "(0: off).", NULL, NULL, DB, g_db_sync_need},
    {"pmgcm_db_sync_followers_acknowledging", G,
     "db_sync: followers acknowledging now.", NULL, NULL, DB, g_db_sync_have},
    {"pmgcm_db_sync_waiting", G,
     "db_sync: captured transactions waiting for acknowledgement.", NULL,
     NULL, DB, g_db_sync_waiting},

    /* the gossip layer */
    {"pmgcm_gossip_members", G,
     "Gossip members known, this node included, in any state.", NULL, NULL,
     0, g_members},
    {"pmgcm_gossip_local_health", G,
     "Lifeguard local health score (0 is healthy; higher: this node is "
     "slow).", NULL, NULL, 0, g_local_health},
    {"pmgcm_gossip_probes_total", C, "Failure detector probes sent.", NULL,
     NULL, 0, g_probes},
    {"pmgcm_gossip_probe_failures_total", C,
     "Probes that got no direct ack in time.", NULL, NULL, 0, g_probe_fails},
    {"pmgcm_gossip_indirect_probes_total", C,
     "Indirect probes requested through other members.", NULL, NULL, 0,
     g_indirect},
    {"pmgcm_gossip_tcp_fallback_probes_total", C, "TCP fallback probes.",
     NULL, NULL, 0, g_tcp_fallback},
    {"pmgcm_gossip_suspicions_total", C,
     "Members this node started to suspect.", NULL, NULL, 0, g_suspicions},
    {"pmgcm_gossip_refutations_total", C,
     "Suspicions of this node that it refuted.", NULL, NULL, 0,
     g_refutations},
    {"pmgcm_gossip_deaths_declared_total", C,
     "Members this node declared dead.", NULL, NULL, 0, g_deaths},
    {"pmgcm_gossip_packets_received_total", C, "UDP gossip packets received.",
     NULL, NULL, 0, g_udp_in},
    {"pmgcm_gossip_packets_sent_total", C, "UDP gossip packets sent.", NULL,
     NULL, 0, g_udp_out},
    {"pmgcm_gossip_bytes_received_total", C,
     "Gossip bytes received (sealed UDP packets and TCP frames).", NULL, NULL,
     0, g_bytes_in},
    {"pmgcm_gossip_bytes_sent_total", C,
     "Gossip bytes sent (sealed UDP packets and TCP frames).", NULL, NULL, 0,
     g_bytes_out},
    {"pmgcm_gossip_streams_total", C,
     "TCP gossip exchanges (push-pull, fallback probes), by direction.",
     "direction", v_direction, 0, g_streams},
    {"pmgcm_gossip_stream_failures_total", C,
     "Outgoing TCP gossip exchanges that failed.", NULL, NULL, 0,
     g_stream_failures},
    {"pmgcm_gossip_packets_dropped_total", C,
     "Gossip input dropped unparsed, by reason; decrypt: no key of the "
     "keyring opens it (wrong key or label, tampered, garbage); replay: seen "
     "before or too old (a replayed packet); misdirected: addressed to "
     "another node (a packet recorded on its way elsewhere).", "reason",
     v_reason, 0, g_dropped},
    {"pmgcm_gossip_acks_ignored_total", C,
     "Acks and nacks from a node that was neither probed nor asked to relay "
     "(ignored).", NULL, NULL, 0, g_acks_ignored},
    {"pmgcm_gossip_updates_sent_total", C,
     "Membership updates piggybacked on gossip packets.", NULL, NULL, 0,
     g_updates_sent},
    {"pmgcm_gossip_user_messages_delivered_total", C,
     "Cluster broadcasts (config announcements) delivered.", NULL, NULL, 0,
     g_user_msgs},

    /* the status and agent ports */
    {"pmgcm_status_connections", G,
     "Connections open on the status port now.", NULL, NULL, 0,
     g_http_open},
    {"pmgcm_status_connections_total", C,
     "Connections accepted on the status port.", NULL, NULL, 0,
     g_http_conns},
    {"pmgcm_status_requests_total", C,
     "Answers given on the status port (any status).", NULL, NULL, 0,
     g_http_requests},
    {"pmgcm_status_bad_requests_total", C,
     "Malformed or oversized requests (400, 414, 431, 501, 505).", NULL,
     NULL, 0, g_http_bad},
    {"pmgcm_status_timeouts_total", C,
     "Requests not complete within the read timeout (408).", NULL, NULL, 0,
     g_http_timeouts},
    {"pmgcm_status_connections_evicted_total", C,
     "Slow connections dropped at the connection cap for a new one.", NULL,
     NULL, 0, g_http_evicted},
    {"pmgcm_status_connections_rejected_total", C,
     "Connections refused (503): no room could be made for them.", NULL,
     NULL, 0, g_http_rejected},
    {"pmgcm_status_requests_denied_total", C,
     "/status or /metrics refused by status_access / metrics_access (401, "
     "403).", NULL, NULL, 0, g_http_denied},
    {"pmgcm_agent_connections_total", C,
     "Connections accepted on the agent port.", NULL, NULL, 0,
     g_agent_conns},
    {"pmgcm_agent_connections_evicted_total", C,
     "Agent port connections dropped at a cap to make room.", NULL, NULL, 0,
     g_agent_evicted},

    /* what unauthenticated peers may hold: the memory budget, the node
     * API's handshakes and joiners, the join throttle */
    {"pmgcm_unauth_memory_limit_bytes", G,
     "unauth_budget_bytes: memory allowed for unauthenticated input.", NULL,
     NULL, 0, g_budget_limit},
    {"pmgcm_unauth_memory_used_bytes", G,
     "Memory held now for unauthenticated input (requests, TLS handshakes, "
     "gossip frames).", NULL, NULL, 0, g_budget_used},
    {"pmgcm_unauth_memory_peak_bytes", G,
     "Most memory ever held at once for unauthenticated input.", NULL, NULL,
     0, g_budget_peak},
    {"pmgcm_api_handshakes", G,
     "Unfinished TLS handshakes on the node API now.", NULL, NULL, 0,
     g_api_handshakes},
    {"pmgcm_api_handshakes_evicted_total", C,
     "Unfinished node API handshakes dropped to make room for newer ones.",
     NULL, NULL, 0, g_api_hs_evicted},
    {"pmgcm_api_handshake_timeouts_total", C,
     "Node API handshakes not done within the timeout.", NULL, NULL, 0,
     g_api_hs_timeouts},
    {"pmgcm_api_connections_dropped_total", C,
     "Node API connections dropped at once (no room, no budget).", NULL,
     NULL, 0, g_api_dropped},
    {"pmgcm_api_node_streams", G,
     "Node API connections of known nodes now (streams, fetches).", NULL,
     NULL, 0, g_api_streams},
    {"pmgcm_api_node_streams_max", G,
     "The most node API connections of known nodes allowed (sized from the "
     "cluster).", NULL, NULL, 0, g_api_streams_max},
    {"pmgcm_api_joiners", G,
     "Node API connections of unknown certificates (joiners) now.", NULL,
     NULL, 0, g_api_joiners},
    {"pmgcm_join_wrong_passwords_total", C,
     "Join attempts with a wrong password (on this node as master).", NULL,
     NULL, 0, g_join_wrong},
    {"pmgcm_join_refused_total", C,
     "Join attempts refused before the password was checked, by reason: busy "
     "(an attempt from the same /24 or /64 in flight), budget (the "
     "cluster-wide budget of wrong passwords spent), full (every throttle "
     "slot holds a recently failing source).", "reason", v_join, 0,
     g_join_refused},
    {"pmgcm_join_budget_left", G,
     "Wrong join passwords the master takes now before it pauses joins.",
     NULL, NULL, 0, g_join_budget},
    {"pmgcm_unauth_memory_refused_total", C,
     "Times unauthenticated input did not fit the budget (room was made or "
     "it was refused).", NULL, NULL, 0, g_budget_refused},
};

#undef G
#undef C
#undef DB

const pmm_metric *pmm_metrics_table(size_t *n)
{
    if (n != NULL)
        *n = sizeof(metrics) / sizeof(metrics[0]);
    return metrics;
}

/* One metric: HELP and TYPE, then a sample per label value (a metric
 * whose getter declines its first sample is left out whole). */
static void write_metric(pmm_buf *b, const pmm_metric *m,
                         const pmm_metric_in *in)
{
    size_t n = m->values != NULL ? 0 : 1;
    pmm_metric_val val;

    while (m->values != NULL && m->values[n] != NULL)
        n++;
    memset(&val, 0, sizeof(val));
    if (!m->get(in, 0, &val))
        return;
    pmm_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help,
                   m->name, m->type);
    for (size_t i = 0; i < n; i++) {
        if (i > 0) {
            memset(&val, 0, sizeof(val));
            if (!m->get(in, i, &val))
                continue;
        }
        pmm_buf_puts(b, m->name);
        if (m->label != NULL)
            /* label values are the table's own constants: nothing to
             * escape (test_metrics checks) */
            pmm_buf_printf(b, "{%s=\"%s\"}", m->label, m->values[i]);
        if (m->flags & PMM_METRIC_SECONDS)
            pmm_buf_printf(b, " %.3f\n", val.d);
        else
            pmm_buf_printf(b, " %" PRIu64 "\n", val.u);
    }
}

void pmm_metrics_write(pmm_buf *b, const pmm_http_view *v)
{
    pmm_http_check ch[PMM_HTTP_CHECKS_MAX];
    size_t n = pmm_http_checks(v, ch);
    pmm_metric_in in = {.v = v, .ready = true};

    for (size_t i = 0; i < n; i++)
        if (ch[i].readiness && ch[i].level != PMM_HTTP_OK)
            in.ready = false;
    for (size_t i = 0; i < sizeof(metrics) / sizeof(metrics[0]); i++)
        if (!(metrics[i].flags & PMM_METRIC_DB) || v->has_db)
            write_metric(b, &metrics[i], &in);
}

/*
 * insncount: a QEMU TCG plugin that counts executed guest instructions per translation block (TB).
 *
 * Written for the QEMU 7.2 plugin API, version 1. Debian ships no qemu-plugin.h, so the handful of API functions
 * used here are declared below, with the signatures of that API version.
 *
 * Arguments (comma-separated after the library path on the -plugin option):
 *   out=PATH      where to write the counts at exit (required)
 *   begin=ADDR    optional: a TB starting at ADDR opens a counting window (e.g. a marker function's entry)
 *   end=ADDR      optional: a TB starting at ADDR closes it
 *
 * Every translation gets its own counter record, allocated at translation time; an inline add of the TB's
 * instruction count into that record runs on each execution, which keeps the run almost as fast as without
 * the plugin. When begin/end are given, their TBs also get an execution callback: "begin" snapshots every
 * counter, "end" adds (counter - snapshot) into the record's window total. So the window counts are exactly
 * what ran between the markers, whichever function it ran in.
 *
 * Output, one line per record (a TB address may appear more than once if QEMU translated it again):
 *   # insncount 1 windows=W records=R
 *   <vaddr hex> <executions x instructions, whole run> <same, inside windows only>
 *
 * Build: gcc -shared -fPIC -O2 -o libinsncount.so insncount.c
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- QEMU 7.2 plugin API v1, the subset used here ---- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

#define EXPORT __attribute__((visibility("default")))
EXPORT int qemu_plugin_version = 1;

/* ---- counter records: fixed-size blocks, never moved, so the inline add can point into them ---- */
struct record {
    uint64_t count;    /* instructions executed by this translation, whole run (the inline add's target) */
    uint64_t snapshot; /* count when the current window opened */
    uint64_t window;   /* instructions executed inside closed windows */
    uint64_t vaddr;
};

#define BLOCK_RECORDS 4096
struct block {
    struct block *next;
    size_t used;
    struct record records[BLOCK_RECORDS];
};

static struct block *blocks;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char *out_path;
static uint64_t begin_addr = UINT64_MAX, end_addr = UINT64_MAX;
static bool window_open;
static uint64_t windows;

static struct record *new_record(uint64_t vaddr)
{
    if (!blocks || blocks->used == BLOCK_RECORDS) {
        struct block *b = calloc(1, sizeof(*b));
        if (!b) {
            return NULL;
        }
        b->next = blocks;
        blocks = b;
    }
    struct record *r = &blocks->records[blocks->used++];
    r->vaddr = vaddr; /* count and snapshot start at 0, so a TB first translated inside a window counts fully */
    return r;
}

static void open_window(unsigned int vcpu, void *unused)
{
    (void)vcpu;
    (void)unused;
    pthread_mutex_lock(&lock);
    for (struct block *b = blocks; b; b = b->next) {
        for (size_t i = 0; i < b->used; i++) {
            b->records[i].snapshot = b->records[i].count;
        }
    }
    window_open = true;
    pthread_mutex_unlock(&lock);
}

static void close_window(unsigned int vcpu, void *unused)
{
    (void)vcpu;
    (void)unused;
    pthread_mutex_lock(&lock);
    if (window_open) {
        for (struct block *b = blocks; b; b = b->next) {
            for (size_t i = 0; i < b->used; i++) {
                b->records[i].window += b->records[i].count - b->records[i].snapshot;
            }
        }
        window_open = false;
        windows++;
    }
    pthread_mutex_unlock(&lock);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    uint64_t vaddr = qemu_plugin_tb_vaddr(tb);
    pthread_mutex_lock(&lock);
    struct record *r = new_record(vaddr);
    pthread_mutex_unlock(&lock);
    if (!r) {
        return; /* out of host memory: this TB goes uncounted rather than crashing QEMU */
    }
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &r->count,
                                             (uint64_t)qemu_plugin_tb_n_insns(tb));
    if (vaddr == begin_addr) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, open_window, QEMU_PLUGIN_CB_NO_REGS, NULL);
    } else if (vaddr == end_addr) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, close_window, QEMU_PLUGIN_CB_NO_REGS, NULL);
    }
}

static void write_counts(qemu_plugin_id_t id, void *unused)
{
    (void)id;
    (void)unused;
    pthread_mutex_lock(&lock);
    size_t n = 0;
    for (struct block *b = blocks; b; b = b->next) {
        n += b->used;
    }
    FILE *f = fopen(out_path, "w");
    if (!f) {
        qemu_plugin_outs("insncount: cannot open the out= file\n");
    } else {
        fprintf(f, "# insncount 1 windows=%" PRIu64 " records=%zu\n", windows, n);
        for (struct block *b = blocks; b; b = b->next) {
            for (size_t i = 0; i < b->used; i++) {
                const struct record *r = &b->records[i];
                if (r->count) {
                    fprintf(f, "%" PRIx64 " %" PRIu64 " %" PRIu64 "\n", r->vaddr, r->count, r->window);
                }
            }
        }
        fclose(f);
    }
    pthread_mutex_unlock(&lock);
}

static bool parse_addr(const char *text, uint64_t *value)
{
    char *end;
    unsigned long long v = strtoull(text, &end, 0);
    if (end == text || *end) {
        return false;
    }
    *value = (uint64_t)v;
    return true;
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        bool ok = true;
        if (strncmp(arg, "out=", 4) == 0) {
            out_path = strdup(arg + 4);
        } else if (strncmp(arg, "begin=", 6) == 0) {
            ok = parse_addr(arg + 6, &begin_addr);
        } else if (strncmp(arg, "end=", 4) == 0) {
            ok = parse_addr(arg + 4, &end_addr);
        } else {
            ok = false;
        }
        if (!ok) {
            qemu_plugin_outs("insncount: bad argument (expected out=PATH, begin=ADDR, end=ADDR)\n");
            return 1;
        }
    }
    if (!out_path) {
        qemu_plugin_outs("insncount: out=PATH is required\n");
        return 1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}

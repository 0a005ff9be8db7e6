/* ep_example_c.c - an example ep_core execution provider written in C99 against ep_plugin.h.
 *
 * Runs Relu, Add (with numpy broadcasting) and MatMul (2-D) on float32 tensors in its own memory
 * space: buffers come from malloc behind allocate/free, and the runtime moves values in and out
 * through copy_tensor, so the session inserts copy nodes at the boundaries with other providers.
 *
 * Options (string key/values):
 *   "fuse"      "1": chains of supported nodes become compiled groups (compile/compute_compiled);
 *               default "0": every supported node is claimed alone and run through compute.
 *   "device_id" which device id to report (default 0).
 *
 * Build: cc -std=c99 -shared -fPIC -O2 -I ep_core/include -o build/libep_example_c.so \
 *            examples/c_provider/ep_example_c.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep_plugin.h"

#define MAX_RANK 8

typedef struct Provider {
    int fuse;
    EpDevice device;
    long live_buffers; /* allocations not yet freed, for leak checks */
} Provider;

enum { OP_NONE = 0, OP_RELU, OP_ADD, OP_MATMUL };

static int op_code(const char *domain, const char *op_type) {
    if (domain[0] != '\0') return OP_NONE;
    if (strcmp(op_type, "Relu") == 0) return OP_RELU;
    if (strcmp(op_type, "Add") == 0) return OP_ADD;
    if (strcmp(op_type, "MatMul") == 0) return OP_MATMUL;
    return OP_NONE;
}

static EpStatus fail(char *msg, size_t msg_len, EpStatus status, const char *text) {
    snprintf(msg, msg_len, "%s", text);
    return status;
}

/* ---- provider lifetime and device ---------------------------------------------------------- */
static EpStatus create_provider(int32_t n_options, const char *const *keys,
                                const char *const *values, void **out, char *msg, size_t msg_len) {
    Provider *p = (Provider *)calloc(1, sizeof(Provider));
    if (!p) return fail(msg, msg_len, EP_OUT_OF_MEMORY, "out of memory");
    p->device.device_type = EP_DEVICE_EXT;
    for (int32_t k = 0; k < n_options; ++k) {
        if (strcmp(keys[k], "fuse") == 0) {
            p->fuse = strcmp(values[k], "1") == 0 || strcmp(values[k], "True") == 0;
        } else if (strcmp(keys[k], "device_id") == 0) {
            p->device.device_id = atoi(values[k]);
        } else {
            snprintf(msg, msg_len, "unknown option '%s' (known: fuse, device_id)", keys[k]);
            free(p);
            return EP_INVALID_ARGUMENT;
        }
    }
    *out = p;
    return EP_OK;
}

static void release_provider(void *provider) { free(provider); }

static EpStatus get_device(void *provider, EpDevice *device, char *msg, size_t msg_len) {
    (void)msg; (void)msg_len;
    *device = ((Provider *)provider)->device;
    return EP_OK;
}

/* ---- capability ------------------------------------------------------------------------------ */
static int is_float_tensor(const EpValueInfo *v) { return v->elem_type == EP_ELEM_FLOAT; }

static int supported(const EpNode *n) {
    int op = op_code(n->domain, n->op_type);
    if (op == OP_NONE || n->n_outputs != 1 || !is_float_tensor(&n->outputs[0])) return 0;
    for (int32_t k = 0; k < n->n_inputs; ++k)
        if (!is_float_tensor(&n->inputs[k])) return 0;
    if (op == OP_RELU) return n->n_inputs == 1;
    if (op == OP_ADD) return n->n_inputs == 2 && n->inputs[0].rank <= MAX_RANK
                             && n->inputs[1].rank <= MAX_RANK;
    /* MatMul: only the 2-D case, known from the graph's shapes */
    return n->n_inputs == 2 && n->inputs[0].rank == 2 && n->inputs[1].rank == 2;
}

static int is_external(const EpGraphView *v, const char *name) {
    for (int32_t k = 0; k < v->n_external_outputs; ++k)
        if (strcmp(v->external_outputs[k], name) == 0) return 1;
    return 0;
}

/* How many inputs of the view's nodes read `name`. */
static int readers(const EpGraphView *v, const char *name) {
    int count = 0;
    for (int32_t k = 0; k < v->n_nodes; ++k)
        for (int32_t i = 0; i < v->nodes[k].n_inputs; ++i)
            if (strcmp(v->nodes[k].inputs[i].name, name) == 0) { ++count; break; }
    return count;
}

static EpStatus get_capability(void *provider, const EpGraphView *v, int32_t *group,
                               char *msg, size_t msg_len) {
    Provider *p = (Provider *)provider;
    (void)msg; (void)msg_len;
    for (int32_t k = 0; k < v->n_nodes; ++k) {
        if (!supported(&v->nodes[k])) continue;
        group[k] = EP_CLAIM_NODE;
        if (!p->fuse) continue;
        /* Fuse mode: join the group of a supported producer whose only reader is this node and
         * whose output is not needed outside. Such chains can never form a cycle. */
        for (int32_t i = 0; i < v->nodes[k].n_inputs && group[k] == EP_CLAIM_NODE; ++i) {
            for (int32_t j = 0; j < k; ++j) {
                const char *out = v->nodes[j].outputs[0].name;
                if (group[j] == EP_NOT_CLAIMED || !supported(&v->nodes[j])
                    || strcmp(out, v->nodes[k].inputs[i].name) != 0) continue;
                if (readers(v, out) == 1 && !is_external(v, out)) {
                    if (group[j] == EP_CLAIM_NODE) group[j] = j; /* start a group at the head */
                    group[k] = group[j];
                }
                break;
            }
        }
    }
    return EP_OK;
}

/* ---- memory ---------------------------------------------------------------------------------- */
static EpStatus allocate(void *provider, const EpDevice *device, size_t nbytes, void **ptr,
                         char *msg, size_t msg_len) {
    Provider *p = (Provider *)provider;
    if (device->device_type != p->device.device_type || device->device_id != p->device.device_id)
        return fail(msg, msg_len, EP_INVALID_ARGUMENT, "allocate on a device this provider does not own");
    *ptr = malloc(nbytes ? nbytes : 1);
    if (!*ptr) return fail(msg, msg_len, EP_OUT_OF_MEMORY, "malloc failed");
    ++p->live_buffers;
    return EP_OK;
}

static void release_buffer(void *provider, const EpDevice *device, void *ptr) {
    (void)device;
    if (ptr) { free(ptr); --((Provider *)provider)->live_buffers; }
}

static int64_t numel(int32_t ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int32_t k = 0; k < ndim; ++k) n *= shape[k];
    return n;
}

static EpStatus copy_tensor(void *provider, const EpTensor *src, const EpTensor *dst,
                            char *msg, size_t msg_len) {
    (void)provider;
    if (src->ndim != dst->ndim || src->dtype.code != dst->dtype.code
        || src->dtype.bits != dst->dtype.bits)
        return fail(msg, msg_len, EP_INVALID_ARGUMENT, "copy_tensor: dtype or rank differ");
    for (int32_t k = 0; k < src->ndim; ++k)
        if (src->shape[k] != dst->shape[k])
            return fail(msg, msg_len, EP_INVALID_ARGUMENT, "copy_tensor: shapes differ");
    if (src->strides || dst->strides)
        return fail(msg, msg_len, EP_NOT_IMPLEMENTED, "copy_tensor: strided tensors");
    size_t nbytes = (size_t)numel(src->ndim, src->shape) * ((src->dtype.bits + 7u) / 8u);
    /* host and this "device" are both plain process memory, so either direction is a memcpy */
    memcpy((char *)dst->data + dst->byte_offset, (const char *)src->data + src->byte_offset, nbytes);
    return EP_OK;
}

/* ---- kernels --------------------------------------------------------------------------------- */
typedef struct View {      /* a compact float32 tensor */
    float *data;
    int32_t ndim;
    int64_t shape[MAX_RANK];
} View;

static EpStatus view_of(const EpTensor *t, View *v, char *msg, size_t msg_len) {
    if (!t->data && t->ndim < 0) return fail(msg, msg_len, EP_INVALID_ARGUMENT, "missing input");
    if (t->dtype.code != EP_DTYPE_FLOAT || t->dtype.bits != 32 || t->dtype.lanes != 1)
        return fail(msg, msg_len, EP_INVALID_ARGUMENT, "only float32 tensors are supported");
    if (t->device.device_type != EP_DEVICE_EXT)
        return fail(msg, msg_len, EP_INVALID_ARGUMENT, "input is not in this provider's memory");
    if (t->ndim > MAX_RANK || t->strides)
        return fail(msg, msg_len, EP_NOT_IMPLEMENTED, "rank > 8 or strided input");
    v->data = (float *)((char *)t->data + t->byte_offset);
    v->ndim = t->ndim;
    for (int32_t k = 0; k < t->ndim; ++k) v->shape[k] = t->shape[k];
    return EP_OK;
}

/* Output shape of `op` from its inputs' shapes. */
static EpStatus infer(int op, const View *in, View *out, char *msg, size_t msg_len) {
    if (op == OP_RELU) { *out = in[0]; return EP_OK; }
    if (op == OP_MATMUL) {
        if (in[0].ndim != 2 || in[1].ndim != 2 || in[0].shape[1] != in[1].shape[0]) {
            snprintf(msg, msg_len, "MatMul: shapes [%lld,%lld] x [%lld,%lld] do not match (2-D only)",
                     (long long)in[0].shape[0], (long long)(in[0].ndim > 1 ? in[0].shape[1] : -1),
                     (long long)in[1].shape[0], (long long)(in[1].ndim > 1 ? in[1].shape[1] : -1));
            return EP_INVALID_ARGUMENT;
        }
        out->ndim = 2;
        out->shape[0] = in[0].shape[0];
        out->shape[1] = in[1].shape[1];
        return EP_OK;
    }
    /* Add: numpy broadcasting, shapes aligned on the right */
    out->ndim = in[0].ndim > in[1].ndim ? in[0].ndim : in[1].ndim;
    for (int32_t k = 0; k < out->ndim; ++k) {
        int32_t a = k - (out->ndim - in[0].ndim), b = k - (out->ndim - in[1].ndim);
        int64_t da = a >= 0 ? in[0].shape[a] : 1, db = b >= 0 ? in[1].shape[b] : 1;
        if (da != db && da != 1 && db != 1)
            return fail(msg, msg_len, EP_INVALID_ARGUMENT, "Add: shapes cannot be broadcast");
        out->shape[k] = da == 1 ? db : da;
    }
    return EP_OK;
}

static void relu(const View *x, View *y) {
    int64_t n = numel(x->ndim, x->shape);
    for (int64_t i = 0; i < n; ++i) y->data[i] = x->data[i] > 0.0f ? x->data[i] : 0.0f;
}

static void add(const View *a, const View *b, View *y) {
    int32_t r = y->ndim;
    int64_t sa[MAX_RANK], sb[MAX_RANK], idx[MAX_RANK] = {0}, step_a = 1, step_b = 1;
    for (int32_t k = r - 1; k >= 0; --k) { /* element strides, 0 along broadcast dimensions */
        int32_t ka = k - (r - a->ndim), kb = k - (r - b->ndim);
        int64_t da = ka >= 0 ? a->shape[ka] : 1, db = kb >= 0 ? b->shape[kb] : 1;
        sa[k] = da == 1 ? 0 : step_a;
        sb[k] = db == 1 ? 0 : step_b;
        step_a *= da;
        step_b *= db;
    }
    int64_t n = numel(r, y->shape), oa = 0, ob = 0;
    for (int64_t i = 0; i < n; ++i) {
        y->data[i] = a->data[oa] + b->data[ob];
        for (int32_t k = r - 1; k >= 0; --k) { /* odometer increment of the output index */
            oa += sa[k];
            ob += sb[k];
            if (++idx[k] < y->shape[k]) break;
            oa -= sa[k] * y->shape[k];
            ob -= sb[k] * y->shape[k];
            idx[k] = 0;
        }
    }
}

static void matmul(const View *a, const View *b, View *y) {
    int64_t M = a->shape[0], K = a->shape[1], N = b->shape[1];
    memset(y->data, 0, (size_t)(M * N) * sizeof(float));
    for (int64_t i = 0; i < M; ++i)
        for (int64_t k = 0; k < K; ++k) {
            float aik = a->data[i * K + k];
            const float *brow = b->data + k * N;
            float *yrow = y->data + i * N;
            for (int64_t j = 0; j < N; ++j) yrow[j] += aik * brow[j];
        }
}

static void run_op(int op, const View *in, View *out) {
    if (op == OP_RELU) relu(&in[0], out);
    else if (op == OP_ADD) add(&in[0], &in[1], out);
    else matmul(&in[0], &in[1], out);
}

static EpStatus allocate_output(EpOutputs *outputs, int32_t index, View *v, EpTensor *t,
                                char *msg, size_t msg_len) {
    EpDataType f32 = {EP_DTYPE_FLOAT, 32, 1};
    EpStatus s = outputs->allocate(outputs->handle, index, v->ndim, v->shape, f32, t);
    if (s != EP_OK) return fail(msg, msg_len, s, "the runtime could not allocate an output");
    v->data = (float *)((char *)t->data + t->byte_offset);
    return EP_OK;
}

static EpStatus compute(void *provider, const EpNode *node, int32_t n_inputs,
                        const EpTensor *inputs, EpOutputs *outputs, char *msg, size_t msg_len) {
    (void)provider;
    int op = op_code(node->domain, node->op_type);
    if (op == OP_NONE) return fail(msg, msg_len, EP_NOT_IMPLEMENTED, "op not supported");
    View in[2], out;
    EpTensor t;
    if (n_inputs != (op == OP_RELU ? 1 : 2))
        return fail(msg, msg_len, EP_INVALID_ARGUMENT, "wrong number of inputs");
    for (int32_t k = 0; k < n_inputs; ++k) {
        EpStatus s = view_of(&inputs[k], &in[k], msg, msg_len);
        if (s != EP_OK) return s;
    }
    EpStatus s = infer(op, in, &out, msg, msg_len);
    if (s == EP_OK) s = allocate_output(outputs, 0, &out, &t, msg, msg_len);
    if (s == EP_OK) run_op(op, in, &out);
    return s;
}

/* ---- compiled groups: a tiny program over slots (group inputs, then one per member) ---------- */
typedef struct Step {
    int op;
    int32_t in[2];        /* slot of each input */
    int32_t out_index;    /* which group output this member produces, or -1 */
} Step;

typedef struct Program {
    int32_t n_inputs, n_steps;
    Step *steps;
} Program;

static EpStatus compile(void *provider, const EpGraphView *group, int32_t n_inputs,
                        const char *const *input_names, int32_t n_outputs,
                        const char *const *output_names, void **compiled,
                        char *msg, size_t msg_len) {
    (void)provider;
    Program *prog = (Program *)calloc(1, sizeof(Program));
    Step *steps = (Step *)calloc((size_t)group->n_nodes, sizeof(Step));
    if (!prog || !steps) { free(prog); free(steps); return fail(msg, msg_len, EP_OUT_OF_MEMORY, "oom"); }
    prog->n_inputs = n_inputs;
    prog->n_steps = group->n_nodes;
    prog->steps = steps;
    for (int32_t m = 0; m < group->n_nodes; ++m) {
        const EpNode *n = &group->nodes[m];
        steps[m].op = op_code(n->domain, n->op_type);
        steps[m].out_index = -1;
        for (int32_t j = 0; j < n_outputs; ++j)
            if (strcmp(output_names[j], n->outputs[0].name) == 0) steps[m].out_index = j;
        for (int32_t i = 0; i < n->n_inputs && i < 2; ++i) {
            steps[m].in[i] = -1;
            for (int32_t j = 0; j < n_inputs; ++j)
                if (strcmp(input_names[j], n->inputs[i].name) == 0) steps[m].in[i] = j;
            for (int32_t j = 0; j < m; ++j)
                if (strcmp(group->nodes[j].outputs[0].name, n->inputs[i].name) == 0)
                    steps[m].in[i] = n_inputs + j;
            if (steps[m].in[i] < 0) {
                snprintf(msg, msg_len, "compile: input '%s' of '%s' is not produced in the group",
                         n->inputs[i].name, n->name);
                free(steps); free(prog);
                return EP_INVALID_ARGUMENT;
            }
        }
    }
    *compiled = prog;
    return EP_OK;
}

static EpStatus compute_compiled(void *provider, void *compiled, int32_t n_inputs,
                                 const EpTensor *inputs, EpOutputs *outputs,
                                 char *msg, size_t msg_len) {
    (void)provider;
    Program *prog = (Program *)compiled;
    if (n_inputs != prog->n_inputs) return fail(msg, msg_len, EP_INVALID_ARGUMENT, "input count");
    int32_t n_slots = prog->n_inputs + prog->n_steps;
    View *slots = (View *)calloc((size_t)n_slots, sizeof(View));
    char *owned = (char *)calloc((size_t)n_slots, 1); /* temporaries this call must free */
    EpStatus s = (slots && owned) ? EP_OK : fail(msg, msg_len, EP_OUT_OF_MEMORY, "oom");
    for (int32_t k = 0; s == EP_OK && k < n_inputs; ++k) s = view_of(&inputs[k], &slots[k], msg, msg_len);
    for (int32_t m = 0; s == EP_OK && m < prog->n_steps; ++m) {
        const Step *st = &prog->steps[m];
        View in[2] = {slots[st->in[0]], slots[st->in[st->op == OP_RELU ? 0 : 1]]};
        View *out = &slots[prog->n_inputs + m];
        EpTensor t;
        s = infer(st->op, in, out, msg, msg_len);
        if (s != EP_OK) break;
        if (st->out_index >= 0) {
            s = allocate_output(outputs, st->out_index, out, &t, msg, msg_len);
        } else {
            out->data = (float *)malloc((size_t)numel(out->ndim, out->shape) * sizeof(float) + 1);
            owned[prog->n_inputs + m] = 1;
            if (!out->data) s = fail(msg, msg_len, EP_OUT_OF_MEMORY, "oom");
        }
        if (s == EP_OK) run_op(st->op, in, out);
    }
    for (int32_t k = 0; slots && owned && k < n_slots; ++k)
        if (owned[k]) free(slots[k].data);
    free(slots);
    free(owned);
    return s;
}

static void release_compiled(void *provider, void *compiled) {
    (void)provider;
    Program *prog = (Program *)compiled;
    if (prog) { free(prog->steps); free(prog); }
}

/* ---- the table ------------------------------------------------------------------------------- */
static const EpPluginApi api = {
    EP_PLUGIN_ABI_MAJOR, EP_PLUGIN_ABI_MINOR, (uint32_t)sizeof(EpPluginApi), "example_c",
    create_provider, release_provider, get_device, get_capability,
    compute, compile, compute_compiled, release_compiled,
    allocate, release_buffer, copy_tensor,
};

EP_PLUGIN_EXPORT const EpPluginApi *ep_plugin_get_api(void) { return &api; }

/* Not part of the ABI: lets tests check that every buffer was freed. */
EP_PLUGIN_EXPORT long ep_example_c_live_buffers(void *provider) {
    return ((Provider *)provider)->live_buffers;
}

/* ep_plugin.h - C ABI for third-party ep_core execution providers (C99).
 *
 * A plugin is a shared library exporting one function, `ep_plugin_get_api`, that returns a
 * versioned table of function pointers (EpPluginApi). ep_core loads it with
 * `ep_core.register_provider_library(name, path)`.
 *
 * Versioning: EP_PLUGIN_ABI_MAJOR must equal the core's; a plugin built for an older minor loads,
 * a newer minor is refused. Later minors only append members to EpPluginApi, so `struct_size`
 * tells the core which members the plugin knows about.
 *
 * Errors: every fallible function returns an EpStatus and writes a NUL-terminated message of at
 * most `msg_len` bytes (including the NUL) into `msg`. The core raises it as a typed Python error
 * naming the plugin (EP_FAIL -> Fail, EP_INVALID_ARGUMENT -> InvalidArgument,
 * EP_NOT_IMPLEMENTED -> NotImplemented, EP_OUT_OF_MEMORY -> Fail).
 *
 * Pointers handed to a plugin (graph views, names, shapes) are valid only during the call; copy
 * what you keep. Tensors are described DLPack-style (EpTensor is layout-compatible with DLTensor).
 */
#ifndef EP_PLUGIN_H
#define EP_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EP_PLUGIN_ABI_MAJOR 1
#define EP_PLUGIN_ABI_MINOR 0
#define EP_PLUGIN_ENTRY_SYMBOL "ep_plugin_get_api"

#if defined(_WIN32)
#define EP_PLUGIN_EXPORT __declspec(dllexport)
#else
#define EP_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/* ---- status codes -------------------------------------------------------------------------- */
typedef int32_t EpStatus;
#define EP_OK 0
#define EP_FAIL 1
#define EP_INVALID_ARGUMENT 2
#define EP_NOT_IMPLEMENTED 3
#define EP_OUT_OF_MEMORY 4

/* ---- devices and tensors (DLPack-compatible) ----------------------------------------------- */
#define EP_DEVICE_CPU 1    /* host memory: numpy buffers, handed to the plugin directly */
#define EP_DEVICE_EXT 12   /* the plugin's own memory space (needs allocate/free/copy_tensor) */

typedef struct EpDevice {
    int32_t device_type;   /* EP_DEVICE_CPU or EP_DEVICE_EXT (DLPack DLDeviceType values) */
    int32_t device_id;
} EpDevice;

/* dtype codes as in DLPack's DLDataTypeCode */
#define EP_DTYPE_INT 0
#define EP_DTYPE_UINT 1
#define EP_DTYPE_FLOAT 2
#define EP_DTYPE_BFLOAT 4
#define EP_DTYPE_BOOL 6

typedef struct EpDataType {
    uint8_t code;          /* EP_DTYPE_* */
    uint8_t bits;          /* 32 for float32, 8 for bool */
    uint16_t lanes;        /* always 1 */
} EpDataType;

typedef struct EpTensor {
    void *data;            /* NULL for an omitted optional input */
    EpDevice device;
    int32_t ndim;          /* -1 for an omitted optional input */
    EpDataType dtype;
    const int64_t *shape;  /* ndim entries */
    const int64_t *strides;/* in elements; NULL = compact row-major (what the core always passes) */
    uint64_t byte_offset;  /* bytes from data to the first element */
} EpTensor;

/* ---- read-only graph view for the capability query ----------------------------------------- */
/* ONNX TensorProto.DataType values, for value infos (a few common ones; any ONNX value may occur) */
#define EP_ELEM_UNDEFINED 0
#define EP_ELEM_FLOAT 1
#define EP_ELEM_UINT8 2
#define EP_ELEM_INT8 3
#define EP_ELEM_INT32 6
#define EP_ELEM_INT64 7
#define EP_ELEM_BOOL 9
#define EP_ELEM_FLOAT16 10
#define EP_ELEM_DOUBLE 11

typedef struct EpValueInfo {
    const char *name;      /* "" for an omitted optional input */
    int32_t elem_type;     /* EP_ELEM_*; 0 when unknown or not a tensor */
    int32_t rank;          /* -1 when unknown */
    const int64_t *dims;   /* rank entries; -1 for an unknown or symbolic dimension */
} EpValueInfo;

/* ONNX AttributeProto.AttributeType values */
#define EP_ATTR_UNDEFINED 0   /* graph/sparse/type attributes are not exposed */
#define EP_ATTR_FLOAT 1
#define EP_ATTR_INT 2
#define EP_ATTR_STRING 3
#define EP_ATTR_TENSOR 4
#define EP_ATTR_FLOATS 6
#define EP_ATTR_INTS 7
#define EP_ATTR_STRINGS 8

typedef struct EpAttribute {
    const char *name;
    int32_t type;             /* EP_ATTR_* */
    int64_t i;                /* EP_ATTR_INT */
    double f;                 /* EP_ATTR_FLOAT */
    const char *s;            /* EP_ATTR_STRING */
    int64_t n;                /* element count of a list attribute */
    const int64_t *ints;      /* EP_ATTR_INTS */
    const double *floats;     /* EP_ATTR_FLOATS */
    const char *const *strings; /* EP_ATTR_STRINGS */
    const EpTensor *tensor;   /* EP_ATTR_TENSOR (host memory) */
} EpAttribute;

typedef struct EpNode {
    const char *name;
    const char *op_type;
    const char *domain;       /* "" for the default ONNX domain */
    int32_t opset;            /* the model's opset for this domain */
    int32_t since_version;    /* since_version of the schema that applies at that opset */
    int32_t n_inputs;
    const EpValueInfo *inputs;
    int32_t n_outputs;
    const EpValueInfo *outputs;
    int32_t n_attributes;
    const EpAttribute *attributes;
} EpNode;

typedef struct EpGraphView {
    int32_t n_nodes;
    const EpNode *nodes;      /* unassigned nodes (or a compiled group's nodes), topological order */
    /* values produced by these nodes that are read outside them: the model's outputs and inputs
     * of nodes already assigned to other providers (for a compiled group: the group's outputs).
     * With the consumers among `nodes`, this tells whether a group may keep a value internal. */
    int32_t n_external_outputs;
    const char *const *external_outputs;
} EpGraphView;

/* get_capability fills node_group[k] (pre-filled with EP_NOT_CLAIMED) for each node k: */
#define EP_NOT_CLAIMED (-1)  /* another provider runs it */
#define EP_CLAIM_NODE (-2)   /* this plugin runs it alone, through `compute` */
/* a value >= 0 is a group id: all nodes with that id become one node compiled by `compile` and
 * run by `compute_compiled`. A group must be acyclic w.r.t. the rest of the graph (no path from
 * the group through an unclaimed node back into it). */

/* ---- outputs: the core allocates them when the plugin knows their shapes ------------------- */
typedef struct EpOutputs {
    void *handle;             /* owned by the core; pass it back to allocate */
    int32_t count;            /* number of outputs */
    /* Allocates output `index` in the provider's memory space (through `allocate` when the
     * plugin has one, else host memory) and describes it in *out. Call once per output. */
    EpStatus (*allocate)(void *handle, int32_t index, int32_t ndim, const int64_t *shape,
                         EpDataType dtype, EpTensor *out);
} EpOutputs;

/* ---- the function table ---------------------------------------------------------------------- */
typedef struct EpPluginApi {
    uint32_t abi_major;       /* EP_PLUGIN_ABI_MAJOR */
    uint32_t abi_minor;       /* EP_PLUGIN_ABI_MINOR */
    uint32_t struct_size;     /* sizeof(EpPluginApi) */
    const char *name;         /* informational */

    /* required */
    EpStatus (*create_provider)(int32_t n_options, const char *const *keys,
                                const char *const *values, void **provider,
                                char *msg, size_t msg_len);
    void (*release_provider)(void *provider);
    EpStatus (*get_device)(void *provider, EpDevice *device, char *msg, size_t msg_len);
    EpStatus (*get_capability)(void *provider, const EpGraphView *view, int32_t *node_group,
                               char *msg, size_t msg_len);

    /* required when get_capability returns EP_CLAIM_NODE */
    EpStatus (*compute)(void *provider, const EpNode *node, int32_t n_inputs,
                        const EpTensor *inputs, EpOutputs *outputs, char *msg, size_t msg_len);

    /* required when get_capability returns group ids */
    EpStatus (*compile)(void *provider, const EpGraphView *group, int32_t n_inputs,
                        const char *const *input_names, int32_t n_outputs,
                        const char *const *output_names, void **compiled,
                        char *msg, size_t msg_len);
    EpStatus (*compute_compiled)(void *provider, void *compiled, int32_t n_inputs,
                                 const EpTensor *inputs, EpOutputs *outputs,
                                 char *msg, size_t msg_len);
    void (*release_compiled)(void *provider, void *compiled);

    /* required when get_device reports a device other than EP_DEVICE_CPU */
    EpStatus (*allocate)(void *provider, const EpDevice *device, size_t nbytes, void **ptr,
                         char *msg, size_t msg_len);
    void (*free)(void *provider, const EpDevice *device, void *ptr);
    /* copies src into dst (same dtype and shape; dst->data already allocated) between host and the
     * provider's memory space, either way */
    EpStatus (*copy_tensor)(void *provider, const EpTensor *src, const EpTensor *dst,
                            char *msg, size_t msg_len);
} EpPluginApi;

typedef const EpPluginApi *(*EpGetPluginApiFn)(void);

/* The one exported symbol. */
EP_PLUGIN_EXPORT const EpPluginApi *ep_plugin_get_api(void);

#ifdef __cplusplus
}
#endif
#endif /* EP_PLUGIN_H */

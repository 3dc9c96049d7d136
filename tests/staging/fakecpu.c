/* SPDX-License-Identifier: MIT */
/*
 * fakecpu.c — fixture device plugin libtp-fakecpu.so: the cpu device behind
 * the fakegpu's faulting pointers.
 *
 * Every op is the cpu device's (loaded from TP_FAKECPU_INNER, the built
 * libtp-cpu.so), called with the pointers translated back, so results are
 * the cpu device's exactly. But the device declares TP_MEM_CUDA and a
 * stream, and its "device pointers" are host addresses plus 2^47, outside
 * the user address space: the core, a layer or a comm that dereferences
 * tensor memory on the host instead of going through the device's ops
 * faults at once. Running the layer suites on it over loopback (which
 * then works on device memory through reduce/copy_2d) checks that whole
 * stack as it would run on a GPU, without one. Events are fakegpu's kind
 * (fixed length); host_alloc is ordinary memory.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tp/tp-plugin.h>

#define OFF ((uintptr_t)1 << 47)

static const tp_device_ops *in_ops; /* the cpu device's */
static int fake_stream;

typedef struct fdev {
    void *in; /* the cpu device's handle */
} fdev;

/* host address behind a fake device pointer (NULL stays NULL) */
static void *H(const void *p)
{
    return p ? (void *)((uintptr_t)p - OFF) : NULL;
}
#define I(d) (((fdev *)(d))->in)

static tp_status f_open(const tp_host *host, const tp_device_args *args, void **dev,
                        tp_rank_env *env)
{
    if (!in_ops) {
        const char *path = getenv("TP_FAKECPU_INNER");
        void *lib = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
        const tp_plugin_desc *(*get)(void) = NULL;
        if (lib)
            *(void **)&get = dlsym(lib, TP_PLUGIN_ENTRY);
        if (!get || !get() || !get()->device)
            return host->set_error(TP_ERR_PLUGIN,
                                   "fakecpu: cannot load the cpu device from TP_FAKECPU_INNER=%s",
                                   path ? path : "(unset)");
        in_ops = get()->device;
    }
    fdev *d = calloc(1, sizeof *d);
    if (!d)
        return host->set_error(TP_ERR_NO_MEMORY, "fakecpu: open");
    tp_status st = in_ops->open(host, args, &d->in, env);
    if (st) {
        free(d);
        return st;
    }
    env->mem_kind = TP_MEM_CUDA;
    env->device_index = args->local_index;
    env->stream = &fake_stream;
    *dev = d;
    return TP_OK;
}

static void f_close(void *dev)
{
    in_ops->close(I(dev));
    free(dev);
}

static tp_status f_alloc(void *dev, size_t bytes, void **ptr)
{
    tp_status st = in_ops->alloc(I(dev), bytes, ptr);
    if (st == TP_OK)
        *ptr = (void *)((uintptr_t)*ptr + OFF);
    return st;
}

static void f_free(void *dev, void *p)
{
    in_ops->free(I(dev), H(p));
}

static tp_status f_upload(void *dev, void *dst, const void *src, size_t n)
{
    return in_ops->upload(I(dev), H(dst), src, n);
}

static tp_status f_download(void *dev, void *dst, const void *src, size_t n)
{
    return in_ops->download(I(dev), dst, H(src), n);
}

static tp_status f_copy_2d(void *dev, void *dst, size_t dp, const void *src, size_t sp, size_t w,
                           size_t h)
{
    return in_ops->copy_2d(I(dev), H(dst), dp, H(src), sp, w, h);
}

static tp_status f_memset(void *dev, void *p, int v, size_t n)
{
    return in_ops->memset(I(dev), H(p), v, n);
}

static tp_status f_sync(void *dev)
{
    return in_ops->synchronize(I(dev));
}

static tp_gemm_args unfake(const tp_gemm_args *g)
{
    tp_gemm_args h = *g;
    h.a = H(g->a), h.b = H(g->b), h.c = H(g->c);
    return h;
}

static tp_status f_gemm(void *dev, const tp_gemm_args *g)
{
    tp_gemm_args h = unfake(g);
    return in_ops->gemm(I(dev), &h);
}

static tp_status f_gemm_bias_act(void *dev, const tp_gemm_args *g, const void *b, tp_act a,
                                 void *pre)
{
    tp_gemm_args h = unfake(g);
    return in_ops->gemm_bias_act(I(dev), &h, H(b), a, H(pre));
}

static tp_status f_bias_add(void *dev, tp_dtype dt, int64_t r, int64_t c, void *y, const void *b)
{
    return in_ops->bias_add(I(dev), dt, r, c, H(y), H(b));
}

static tp_status f_bias_grad(void *dev, tp_dtype dt, int64_t r, int64_t c, const void *dy, void *db)
{
    return in_ops->bias_grad(I(dev), dt, r, c, H(dy), H(db));
}

static tp_status f_gelu(void *dev, tp_dtype dt, int64_t n, const void *x, void *y, int t)
{
    return in_ops->gelu(I(dev), dt, n, H(x), H(y), t);
}

static tp_status f_gelu_bwd(void *dev, tp_dtype dt, int64_t n, const void *x, const void *dy,
                            void *dx, int t)
{
    return in_ops->gelu_bwd(I(dev), dt, n, H(x), H(dy), H(dx), t);
}

static tp_status f_axpby(void *dev, tp_dtype dt, int64_t n, float a, const void *x, float b,
                         void *y)
{
    return in_ops->axpby(I(dev), dt, n, a, H(x), b, H(y));
}

static tp_status f_softmax(void *dev, tp_dtype dt, int64_t r, int64_t c, const void *x, void *y,
                           float s, int causal)
{
    return in_ops->softmax(I(dev), dt, r, c, H(x), H(y), s, causal);
}

static tp_status f_softmax_bwd(void *dev, tp_dtype dt, int64_t r, int64_t c, const void *y,
                               const void *dy, void *dx, float s)
{
    return in_ops->softmax_bwd(I(dev), dt, r, c, H(y), H(dy), H(dx), s);
}

static tp_status f_norm(void *dev, tp_dtype dt, int64_t r, int64_t c, const void *x, const void *g,
                        const void *b, void *y, float *mu, float *rs, float eps, int rms)
{
    return in_ops->norm(I(dev), dt, r, c, H(x), H(g), H(b), H(y), H(mu), H(rs), eps, rms);
}

static tp_status f_norm_bwd(void *dev, tp_dtype dt, int64_t r, int64_t c, const void *x,
                            const void *g, const float *mu, const float *rs, const void *dy,
                            void *dx, void *dg, void *db, int rms)
{
    return in_ops->norm_bwd(I(dev), dt, r, c, H(x), H(g), H(mu), H(rs), H(dy), H(dx), H(dg), H(db),
                            rms);
}

static tp_status f_embedding(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                             int64_t lo, int64_t hi, const void *t, void *o)
{
    return in_ops->embedding(I(dev), dt, n, dim, H(ids), lo, hi, H(t), H(o));
}

static tp_status f_embedding_bwd(void *dev, tp_dtype dt, int64_t n, int64_t dim, const int32_t *ids,
                                 int64_t lo, int64_t hi, const void *o, void *t)
{
    return in_ops->embedding_bwd(I(dev), dt, n, dim, H(ids), lo, hi, H(o), H(t));
}

static tp_status f_row_max(void *dev, tp_dtype dt, int64_t r, int64_t c, const void *x, float *o)
{
    return in_ops->row_max(I(dev), dt, r, c, H(x), H(o));
}

static tp_status f_ce_stats(void *dev, tp_dtype dt, int64_t r, int64_t c, const void *x,
                            const int32_t *t, int64_t lo, const float *mx, float *o3)
{
    return in_ops->ce_stats(I(dev), dt, r, c, H(x), H(t), lo, H(mx), H(o3));
}

static tp_status f_ce_bwd(void *dev, tp_dtype dt, int64_t r, int64_t c, const void *x,
                          const int32_t *t, int64_t lo, int64_t v, const float *mx, const float *se,
                          const float *sc, float s, void *dx)
{
    return in_ops->ce_bwd(I(dev), dt, r, c, H(x), H(t), lo, v, H(mx), H(se), H(sc), s, H(dx));
}

static tp_status f_adamw(void *dev, int64_t n, float *p, const float *g, float *m, float *v,
                         float lr, float b1, float b2, float eps, float wd, int64_t step)
{
    return in_ops->adamw(I(dev), n, H(p), H(g), H(m), H(v), lr, b1, b2, eps, wd, step);
}

static tp_status f_reduce(void *dev, tp_dtype dt, tp_redop op, int64_t n, const void *x, void *y)
{
    return in_ops->reduce(I(dev), dt, op, n, H(x), H(y));
}

/* events: any two make 1 ms (as fakegpu's) */
static tp_status f_event_create(void *dev, void **ev)
{
    *ev = malloc(1);
    return *ev ? TP_OK : TP_ERR_NO_MEMORY;
}

static tp_status f_event_record(void *dev, void *ev)
{
    return TP_OK;
}

static tp_status f_event_elapsed(void *dev, const void *a, const void *b, double *s)
{
    *s = 1e-3;
    return TP_OK;
}

static void f_event_destroy(void *dev, void *ev)
{
    free(ev);
}

static const tp_device_ops fake_ops = {
    .struct_size = sizeof(tp_device_ops),
    .open = f_open,
    .close = f_close,
    .alloc = f_alloc,
    .free = f_free,
    .upload = f_upload,
    .download = f_download,
    .copy_2d = f_copy_2d,
    .memset = f_memset,
    .synchronize = f_sync,
    .gemm = f_gemm,
    .bias_add = f_bias_add,
    .bias_grad = f_bias_grad,
    .gelu = f_gelu,
    .gelu_bwd = f_gelu_bwd,
    .axpby = f_axpby,
    .softmax = f_softmax,
    .softmax_bwd = f_softmax_bwd,
    .norm = f_norm,
    .norm_bwd = f_norm_bwd,
    .embedding = f_embedding,
    .embedding_bwd = f_embedding_bwd,
    .row_max = f_row_max,
    .ce_stats = f_ce_stats,
    .ce_bwd = f_ce_bwd,
    .adamw = f_adamw,
    .reduce = f_reduce,
    .gemm_bias_act = f_gemm_bias_act,
    .event_create = f_event_create,
    .event_record = f_event_record,
    .event_elapsed = f_event_elapsed,
    .event_destroy = f_event_destroy,
};

TP_PLUGIN_DEFINE("fakecpu", "0.1.0",
                 "test fixture: the cpu device's ops behind faulting CUDA-kind pointers", NULL,
                 &fake_ops, NULL)

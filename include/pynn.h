/* pynn's C API: run a model saved by pynn (`model.save(path)`) without
 * Python. Link with -lpynn (`python -m pynn config --cflags --libs`).
 *
 * Every function is thread-safe. Errors come back as a return code and a
 * message written to `err` (at most `err_len` bytes, NUL-terminated), never
 * as an abort. `pynn_model_predict` gives the same bits as `predict` in
 * Python on the same thread count; after the first call for a batch size,
 * a call allocates nothing (each concurrent caller keeps its own scratch). */
#ifndef PYNN_H
#define PYNN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define PYNN_API
#else
#define PYNN_API __attribute__((visibility("default")))
#endif

typedef struct pynn_model pynn_model;

/* The model in the file at `path`, or NULL with a message naming the file
 * and what is wrong (the file is read as untrusted input). */
PYNN_API pynn_model *pynn_model_load(const char *path, char *err, size_t err_len);
/* One sample's input shape into shape[0 .. rank) (the batch axis excluded);
 * returns the rank, or -1 when max_rank is too small. */
PYNN_API int pynn_model_input_shape(const pynn_model *m, int64_t *shape, int max_rank);
PYNN_API int pynn_model_output_shape(const pynn_model *m, int64_t *shape, int max_rank);
/* y[batch, output shape] = the model on x[batch, input shape], both
 * C-contiguous float32; returns 0, or -1 with a message. */
PYNN_API int pynn_model_predict(pynn_model *m, const float *x, int64_t batch, float *y, char *err,
                                size_t err_len);
/* Frees the model and every plan it kept; no call may be using it. */
PYNN_API void pynn_model_free(pynn_model *m);
/* The threads every later call may use (1 to 1024); the default is
 * PYNN_NUM_THREADS, else the cores this process may run on. */
PYNN_API void pynn_set_num_threads(int n);
PYNN_API const char *pynn_version(void);

#ifdef __cplusplus
}
#endif

#endif

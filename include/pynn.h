/* pynn's C API: run a model saved by pynn (`model.save(path)`) without
 * Python. Link with -lpynn (`python -m pynn config --cflags --libs`).
 *
 * Every function is thread-safe. Errors come back as a return code and a
 * message written to `err` (at most `err_len` bytes, NUL-terminated), never
 * as an abort. `pynn_model_predict` and `pynn_model_run` give the same bits
 * as `predict` in Python on the same thread count; after the first call for
 * some input shapes, a call with the same shapes allocates nothing (each
 * concurrent caller keeps its own scratch). */
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
 * C-contiguous float32; returns 0, or -1 with a message (a model with
 * several inputs or outputs, or an input that is not float32 of fixed
 * shape, runs through pynn_model_run). */
PYNN_API int pynn_model_predict(pynn_model *m, const float *x, int64_t batch, float *y, char *err,
                                size_t err_len);
/* Models of any inputs and outputs: several of them, int64 indices and bool
 * masks, axes of any length (an Input shape's None). A call runs the plan
 * kept for its input shapes and thread count, as pynn_model_predict does. */
typedef enum { PYNN_FLOAT32 = 0, PYNN_INT64 = 1, PYNN_BOOL = 2 } pynn_dtype;  /* bool: 1 byte, 0 or 1 */

#define PYNN_MAX_RANK 8

/* A C-contiguous tensor, batch axis first; the library reads inputs' data
 * and writes outputs' data, never keeping either. */
typedef struct {
    pynn_dtype dtype;
    int rank;
    int64_t shape[PYNN_MAX_RANK];
    void *data;
} pynn_tensor;

/* The model's inputs (its Inputs, in order) and outputs. */
PYNN_API int pynn_model_input_count(const pynn_model *m);
PYNN_API int pynn_model_output_count(const pynn_model *m);
/* Input `index`'s name (NULL when it has none; valid while the model is),
 * dtype and one sample's shape into shape[0 .. rank), -1 for a variable
 * axis; returns the rank, or -1 when index or max_rank do not fit.
 * name and dtype may be NULL. */
PYNN_API int pynn_model_input_info(const pynn_model *m, int index, const char **name, pynn_dtype *dtype,
                                   int64_t *shape, int max_rank);
/* The same for output `index` (always PYNN_FLOAT32; its name is the layer
 * or Input that makes it), -1 for an axis that follows a variable input axis. */
PYNN_API int pynn_model_output_info(const pynn_model *m, int index, const char **name, pynn_dtype *dtype,
                                    int64_t *shape, int max_rank);
/* The dtype, rank and shape of every output for these inputs (their data
 * unread, outputs' data untouched): what the caller allocates before
 * pynn_model_run. 0, or -1 with a message naming the input or layer. */
PYNN_API int pynn_model_output_shapes(pynn_model *m, const pynn_tensor *inputs, int n_inputs,
                                      pynn_tensor *outputs, int n_outputs, char *err, size_t err_len);
/* Runs the model: every input of its dtype and a shape that fits its Input,
 * one batch size for all; every output of the shape pynn_model_output_shapes
 * gives. The same bits as Python's predict on the same thread count. 0, or
 * -1 with a message naming the input, output or layer (an out-of-range
 * index names its value). */
PYNN_API int pynn_model_run(pynn_model *m, const pynn_tensor *inputs, int n_inputs, pynn_tensor *outputs,
                            int n_outputs, char *err, size_t err_len);
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

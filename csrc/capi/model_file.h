/* The model file `model.save` writes, read as untrusted input: a
 * safetensors file (an 8-byte little-endian header length, a JSON header
 * naming each tensor's dtype, shape and byte range, then the data) whose
 * metadata holds the architecture as JSON (pynn/architecture.py).
 *
 * Every size and offset is checked against the file's size before it is
 * used, with hard limits on the header and the tensors; float32 tensors are
 * copied into 64-byte aligned arrays. Failures return NULL and a message
 * naming the file and what is wrong. */
#ifndef PYNN_CAPI_MODEL_FILE_H
#define PYNN_CAPI_MODEL_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"

#define PYNN_FILE_MAX_HEADER_BYTES (100u * 1024u * 1024u)  /* safetensors' own limit */
#define PYNN_FILE_MAX_TENSORS 65536
#define PYNN_FILE_MAX_RANK 8
#define PYNN_FILE_MAX_NAME 1024

typedef struct {
    char *name;
    char dtype[8];
    int rank;
    int64_t shape[PYNN_FILE_MAX_RANK];
    int64_t count;       /* elements */
    float *data;         /* float32 tensors only, aligned; NULL for the others */
} pynn_file_tensor;

typedef struct {
    pynn_file_tensor *tensors;
    size_t count;
    pynn_json *header;   /* the parsed header; its "__metadata__" maps strings to strings */
} pynn_model_file;

pynn_model_file *pynn_model_file_read(const char *path, char *err, size_t err_len);
void pynn_model_file_free(pynn_model_file *file);

/* The tensor named `name`, or NULL. */
const pynn_file_tensor *pynn_model_file_tensor(const pynn_model_file *file, const char *name);
/* The metadata string `key`, or NULL. */
const char *pynn_model_file_metadata(const pynn_model_file *file, const char *key);

/* 64-byte aligned storage for `count` floats (at least one), or NULL. */
float *pynn_aligned_floats(size_t count);

#endif

/* A strict JSON reader for model-file headers (RFC 8259, UTF-8 input): the
 * whole text becomes a tree of nodes; duplicate object keys, nesting deeper
 * than PYNN_JSON_MAX_DEPTH, more than PYNN_JSON_MAX_VALUES values, strings
 * with NUL characters and trailing bytes are refused. Nothing aborts: failures return NULL and a message. */
#ifndef PYNN_CAPI_JSON_H
#define PYNN_CAPI_JSON_H

#include <stddef.h>
#include <stdint.h>

#define PYNN_JSON_MAX_DEPTH 64
/* Values in one text: bounds the memory a hostile header costs (a model
 * file with the most tensors safetensors' header limit admits stays below) */
#define PYNN_JSON_MAX_VALUES 2000000

typedef enum {
    PYNN_JSON_NULL, PYNN_JSON_FALSE, PYNN_JSON_TRUE, PYNN_JSON_NUMBER,
    PYNN_JSON_STRING, PYNN_JSON_ARRAY, PYNN_JSON_OBJECT
} pynn_json_kind;

typedef struct pynn_json pynn_json;
struct pynn_json {
    pynn_json_kind kind;
    int is_integer;      /* NUMBER: written without fraction or exponent, fits int64 */
    int64_t integer;
    double number;
    char *string;        /* STRING: the decoded text, NUL-terminated */
    size_t length;       /* STRING: bytes; ARRAY and OBJECT: items */
    pynn_json **items;   /* ARRAY: values; OBJECT: values, keys[i] naming items[i] */
    char **keys;
};

/* The tree of text[0 .. size), or NULL with a message in err. */
pynn_json *pynn_json_parse(const char *text, size_t size, char *err, size_t err_len);
void pynn_json_free(pynn_json *value);

/* Object member `key`, or NULL (also when `object` is not an object). */
const pynn_json *pynn_json_get(const pynn_json *object, const char *key);
/* 1 when `value` is an integer number, its value in *out. */
int pynn_json_int(const pynn_json *value, int64_t *out);

#endif

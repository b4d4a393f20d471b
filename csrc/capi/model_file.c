/* Reading the model file (contract in model_file.h). */
#include "model_file.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void say(char *err, size_t err_len, const char *path, const char *format, ...)
{
    if (!err || !err_len)
        return;
    char what[512];
    va_list args;
    va_start(args, format);
    vsnprintf(what, sizeof what, format, args);
    va_end(args);
    snprintf(err, err_len, "%s: %s", path, what);
}

float *pynn_aligned_floats(size_t count)
{
    void *memory = NULL;
    if (count == 0)
        count = 1;
    if (count > SIZE_MAX / sizeof(float) - 64)
        return NULL;
    const size_t bytes = (count * sizeof(float) + 63) / 64 * 64;
    return posix_memalign(&memory, 64, bytes) ? NULL : memory;
}

static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        const unsigned c = s[i];
        size_t extra;
        unsigned code;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { extra = 1; code = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { extra = 2; code = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { extra = 3; code = c & 0x07; }
        else return 0;
        if (n - i <= extra)
            return 0;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            code = (code << 6) | (s[i + k] & 0x3F);
        }
        if ((extra == 2 && (code < 0x800 || (code >= 0xD800 && code < 0xE000)))
            || (extra == 3 && (code < 0x10000 || code > 0x10FFFF)))
            return 0;
        i += extra + 1;
    }
    return 1;
}

static size_t dtype_size(const char *dtype)
{
    static const char *const names[] = {"BOOL", "U8", "I8", "I16", "U16", "F16", "BF16",
                                        "I32", "U32", "F32", "I64", "U64", "F64"};
    static const size_t sizes[] = {1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        if (!strcmp(dtype, names[i]))
            return sizes[i];
    return 0;
}

typedef struct {
    uint64_t begin, end;
    size_t index;
} byte_range;

static int by_begin(const void *a, const void *b)
{
    const byte_range *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

void pynn_model_file_free(pynn_model_file *file)
{
    if (!file)
        return;
    for (size_t i = 0; i < file->count; i++) {
        free(file->tensors[i].name);
        free(file->tensors[i].data);
    }
    free(file->tensors);
    pynn_json_free(file->header);
    free(file);
}

/* One header entry checked into tensor `t` and its byte range; 0 on success. */
static int check_entry(const char *path, const char *name, const pynn_json *entry, uint64_t data_length,
                       pynn_file_tensor *t, byte_range *range, char *err, size_t err_len)
{
    const pynn_json *dtype = pynn_json_get(entry, "dtype"), *shape = pynn_json_get(entry, "shape"),
                    *offsets = pynn_json_get(entry, "data_offsets");
    if (strlen(name) > PYNN_FILE_MAX_NAME) {
        say(err, err_len, path, "a tensor name is longer than %d bytes", PYNN_FILE_MAX_NAME);
        return -1;
    }
    if (!dtype || !shape || !offsets || entry->length != 3) {
        say(err, err_len, path, "tensor '%s' must have exactly the fields data_offsets, dtype, shape", name);
        return -1;
    }
    if (dtype->kind != PYNN_JSON_STRING || !dtype_size(dtype->string)) {
        say(err, err_len, path, "tensor '%s' has an unsupported dtype", name);
        return -1;
    }
    if (shape->kind != PYNN_JSON_ARRAY || shape->length > PYNN_FILE_MAX_RANK) {
        say(err, err_len, path, "tensor '%s' has a shape that is not a list of at most %d sizes",
            name, PYNN_FILE_MAX_RANK);
        return -1;
    }
    /* every extent below 2^40 and the product checked step by step: no overflow */
    uint64_t count = 1;
    int overflow = 0;
    for (size_t axis = 0; axis < shape->length; axis++) {
        int64_t extent;
        if (!pynn_json_int(shape->items[axis], &extent) || extent < 0 || extent > ((int64_t)1 << 40)) {
            say(err, err_len, path, "tensor '%s' has a shape entry %zu that is not a size", name, axis);
            return -1;
        }
        t->shape[axis] = extent;
        if (extent && count > (UINT64_MAX >> 4) / (uint64_t)extent)
            overflow = 1;
        else
            count *= (uint64_t)extent;
    }
    int64_t begin, end;
    if (offsets->kind != PYNN_JSON_ARRAY || offsets->length != 2 || !pynn_json_int(offsets->items[0], &begin)
        || !pynn_json_int(offsets->items[1], &end) || begin < 0 || begin > end
        || (uint64_t)end > data_length) {
        say(err, err_len, path, "tensor '%s' has data_offsets outside the %llu-byte data section",
            name, (unsigned long long)data_length);
        return -1;
    }
    const uint64_t bytes = count * dtype_size(dtype->string);
    if (overflow || (uint64_t)(end - begin) != bytes) {
        say(err, err_len, path, "tensor '%s' is %s with %llu elements but its data_offsets span %llu bytes",
            name, dtype->string, (unsigned long long)count, (unsigned long long)(end - begin));
        return -1;
    }
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype->string);
    t->rank = (int)shape->length;
    t->count = (int64_t)count;
    range->begin = (uint64_t)begin;
    range->end = (uint64_t)end;
    return 0;
}

static pynn_model_file *read_open(FILE *stream, const char *path, char *err, size_t err_len)
{
    struct stat info;
    if (fstat(fileno(stream), &info) || !S_ISREG(info.st_mode)) {
        say(err, err_len, path, "not a regular file");
        return NULL;
    }
    const uint64_t size = (uint64_t)info.st_size;
    unsigned char prefix[8];
    if (size < 8 || fread(prefix, 1, 8, stream) != 8) {
        say(err, err_len, path, "truncated: %llu bytes, shorter than the 8-byte header length",
            (unsigned long long)size);
        return NULL;
    }
    uint64_t header_length = 0;
    for (int i = 7; i >= 0; i--)
        header_length = header_length << 8 | prefix[i];
    if (header_length > PYNN_FILE_MAX_HEADER_BYTES || header_length > size - 8) {
        say(err, err_len, path, "bad header length %llu: the file holds %llu bytes after it (and headers "
            "are limited to %u)", (unsigned long long)header_length, (unsigned long long)(size - 8),
            PYNN_FILE_MAX_HEADER_BYTES);
        return NULL;
    }
    char *text = malloc(header_length + 1);
    if (!text) {
        say(err, err_len, path, "out of memory for a %llu-byte header", (unsigned long long)header_length);
        return NULL;
    }
    if (fread(text, 1, header_length, stream) != header_length) {
        free(text);
        say(err, err_len, path, "the header could not be read");
        return NULL;
    }
    if (!valid_utf8((const unsigned char *)text, header_length)) {
        free(text);
        say(err, err_len, path, "header is not UTF-8");
        return NULL;
    }
    char why[256] = "";
    pynn_json *header = pynn_json_parse(text, header_length, why, sizeof why);
    free(text);
    if (!header || header->kind != PYNN_JSON_OBJECT) {
        if (header)
            say(err, err_len, path, "header must be a JSON object");
        else
            say(err, err_len, path, "header is not valid JSON: %s", why);
        pynn_json_free(header);
        return NULL;
    }
    pynn_model_file *file = calloc(1, sizeof *file);
    byte_range *ranges = calloc(header->length + 1, sizeof *ranges);
    if (file)
        file->header = header;
    if (!file || !ranges || !(file->tensors = calloc(header->length + 1, sizeof *file->tensors))) {
        say(err, err_len, path, "out of memory");
        goto failed;
    }
    if (header->length > PYNN_FILE_MAX_TENSORS) {
        say(err, err_len, path, "more than %d tensors", PYNN_FILE_MAX_TENSORS);
        goto failed;
    }
    const uint64_t data_length = size - 8 - header_length;
    for (size_t i = 0; i < header->length; i++) {
        const char *name = header->keys[i];
        const pynn_json *entry = header->items[i];
        if (!strcmp(name, "__metadata__")) {
            for (size_t k = 0; entry && entry->kind == PYNN_JSON_OBJECT && k < entry->length; k++)
                if (entry->items[k]->kind != PYNN_JSON_STRING)
                    entry = NULL;
            if (!entry || entry->kind != PYNN_JSON_OBJECT) {
                say(err, err_len, path, "__metadata__ must map strings to strings");
                goto failed;
            }
            continue;
        }
        pynn_file_tensor *t = &file->tensors[file->count];
        if (entry->kind != PYNN_JSON_OBJECT) {
            say(err, err_len, path, "tensor '%.200s' must be an object", name);
            goto failed;
        }
        if (check_entry(path, name, entry, data_length, t, &ranges[file->count], err, err_len))
            goto failed;
        if (!(t->name = strdup(name))) {
            say(err, err_len, path, "out of memory");
            goto failed;
        }
        ranges[file->count].index = file->count;
        file->count++;
    }
    qsort(ranges, file->count, sizeof *ranges, by_begin);
    uint64_t position = 0;
    for (size_t i = 0; i < file->count; i++) {
        if (ranges[i].begin != position) {
            say(err, err_len, path, "tensor '%s' %s", file->tensors[ranges[i].index].name,
                ranges[i].begin < position ? "overlaps the previous tensor" : "leaves a gap before it");
            goto failed;
        }
        position = ranges[i].end;
    }
    if (position != data_length) {
        say(err, err_len, path, "the tensors cover %llu bytes of a %llu-byte data section",
            (unsigned long long)position, (unsigned long long)data_length);
        goto failed;
    }
    for (size_t i = 0; i < file->count; i++) {
        pynn_file_tensor *t = &file->tensors[ranges[i].index];
        if (strcmp(t->dtype, "F32"))
            continue;
        t->data = pynn_aligned_floats((size_t)t->count);
        if (!t->data) {
            say(err, err_len, path, "out of memory for tensor '%s'", t->name);
            goto failed;
        }
        const uint64_t at = 8 + header_length + ranges[i].begin;
        if (fseeko(stream, (off_t)at, SEEK_SET)
            || fread(t->data, sizeof(float), (size_t)t->count, stream) != (size_t)t->count) {
            say(err, err_len, path, "tensor '%s' could not be read (the file changed size?)", t->name);
            goto failed;
        }
    }
    free(ranges);
    return file;
failed:
    free(ranges);
    pynn_model_file_free(file);
    if (!file)
        pynn_json_free(header);
    return NULL;
}

pynn_model_file *pynn_model_file_read(const char *path, char *err, size_t err_len)
{
    if (!path) {
        say(err, err_len, "(null)", "no path given");
        return NULL;
    }
    FILE *stream = fopen(path, "rb");
    if (!stream) {
        say(err, err_len, path, "cannot be opened");
        return NULL;
    }
    pynn_model_file *file = read_open(stream, path, err, err_len);
    fclose(stream);
    return file;
}

const pynn_file_tensor *pynn_model_file_tensor(const pynn_model_file *file, const char *name)
{
    for (size_t i = 0; i < file->count; i++)
        if (!strcmp(file->tensors[i].name, name))
            return &file->tensors[i];
    return NULL;
}

const char *pynn_model_file_metadata(const pynn_model_file *file, const char *key)
{
    const pynn_json *value = pynn_json_get(pynn_json_get(file->header, "__metadata__"), key);
    return value && value->kind == PYNN_JSON_STRING ? value->string : NULL;
}

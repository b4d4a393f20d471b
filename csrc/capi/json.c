/* A strict JSON reader (contract in json.h). */
#include "json.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *text;
    size_t size, at;
    size_t values;      /* made so far */
    char *err;
    size_t err_len;
    int failed;
} reader;

static void fail(reader *r, const char *format, ...)
{
    if (r->failed)
        return;
    r->failed = 1;
    if (r->err && r->err_len) {
        char what[160];
        va_list args;
        va_start(args, format);
        vsnprintf(what, sizeof what, format, args);
        va_end(args);
        snprintf(r->err, r->err_len, "%s at byte %zu", what, r->at);
    }
}

static void skip_space(reader *r)
{
    while (r->at < r->size && (r->text[r->at] == ' ' || r->text[r->at] == '\t'
                               || r->text[r->at] == '\n' || r->text[r->at] == '\r'))
        r->at++;
}

static pynn_json *new_node(reader *r, pynn_json_kind kind)
{
    if (++r->values > PYNN_JSON_MAX_VALUES) {
        fail(r, "more than %d values", PYNN_JSON_MAX_VALUES);
        return NULL;
    }
    pynn_json *node = calloc(1, sizeof *node);
    if (!node)
        fail(r, "out of memory");
    else
        node->kind = kind;
    return node;
}

static int literal(reader *r, const char *word)
{
    const size_t n = strlen(word);
    if (r->size - r->at < n || memcmp(r->text + r->at, word, n)) {
        fail(r, "invalid literal");
        return 0;
    }
    r->at += n;
    return 1;
}

static int hex4(reader *r, unsigned *out)
{
    unsigned value = 0;
    if (r->size - r->at < 4) {
        fail(r, "truncated \\u escape");
        return 0;
    }
    for (int i = 0; i < 4; i++) {
        const char c = r->text[r->at++];
        value <<= 4;
        if (c >= '0' && c <= '9') value |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') value |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') value |= (unsigned)(c - 'A' + 10);
        else {
            fail(r, "invalid \\u escape");
            return 0;
        }
    }
    *out = value;
    return 1;
}

static size_t put_utf8(char *out, unsigned code)
{
    if (code < 0x80) { out[0] = (char)code; return 1; }
    if (code < 0x800) {
        out[0] = (char)(0xC0 | (code >> 6)); out[1] = (char)(0x80 | (code & 0x3F));
        return 2;
    }
    if (code < 0x10000) {
        out[0] = (char)(0xE0 | (code >> 12)); out[1] = (char)(0x80 | ((code >> 6) & 0x3F));
        out[2] = (char)(0x80 | (code & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (code >> 18)); out[1] = (char)(0x80 | ((code >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((code >> 6) & 0x3F)); out[3] = (char)(0x80 | (code & 0x3F));
    return 4;
}

/* The string starting at the opening quote; its decoded length in *length. */
static char *parse_string(reader *r, size_t *length)
{
    r->at++;  /* the quote */
    size_t end = r->at;
    while (end < r->size && r->text[end] != '"')
        end += r->text[end] == '\\' ? 2 : 1;
    if (end >= r->size) {
        fail(r, "unterminated string");
        return NULL;
    }
    /* decoding never lengthens: an escape of n bytes gives at most n */
    char *out = malloc(end - r->at + 1);
    if (!out) {
        fail(r, "out of memory");
        return NULL;
    }
    size_t n = 0;
    while (r->text[r->at] != '"') {
        const unsigned char c = (unsigned char)r->text[r->at];
        if (c < 0x20) {
            fail(r, "control character in a string");
            break;
        }
        if (c != '\\') {
            out[n++] = (char)c;
            r->at++;
            continue;
        }
        const char e = r->text[r->at + 1];
        r->at += 2;
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e && simple) {
            out[n++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            continue;
        }
        unsigned code;
        if (e != 'u' || !hex4(r, &code)) {
            fail(r, "invalid escape in a string");
            break;
        }
        if (code >= 0xD800 && code < 0xDC00) {
            unsigned low;
            if (r->size - r->at < 2 || r->text[r->at] != '\\' || r->text[r->at + 1] != 'u') {
                fail(r, "unpaired surrogate in a string");
                break;
            }
            r->at += 2;
            if (!hex4(r, &low) || low < 0xDC00 || low >= 0xE000) {
                fail(r, "unpaired surrogate in a string");
                break;
            }
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
        } else if (code >= 0xDC00 && code < 0xE000) {
            fail(r, "unpaired surrogate in a string");
            break;
        }
        if (code == 0) {
            fail(r, "NUL character in a string");
            break;
        }
        n += put_utf8(out + n, code);
    }
    if (r->failed) {
        free(out);
        return NULL;
    }
    r->at++;  /* the closing quote */
    out[n] = 0;
    *length = n;
    return out;
}

static void parse_number(reader *r, pynn_json *node)
{
    const size_t start = r->at;
    int integer = 1;
    if (r->text[r->at] == '-')
        r->at++;
    if (r->at < r->size && r->text[r->at] == '0') {
        r->at++;
    } else if (r->at < r->size && r->text[r->at] >= '1' && r->text[r->at] <= '9') {
        while (r->at < r->size && r->text[r->at] >= '0' && r->text[r->at] <= '9') r->at++;
    } else {
        fail(r, "invalid number");
        return;
    }
    if (r->at < r->size && r->text[r->at] == '.') {
        integer = 0;
        r->at++;
        const size_t digits = r->at;
        while (r->at < r->size && r->text[r->at] >= '0' && r->text[r->at] <= '9') r->at++;
        if (r->at == digits) {
            fail(r, "invalid number");
            return;
        }
    }
    if (r->at < r->size && (r->text[r->at] == 'e' || r->text[r->at] == 'E')) {
        integer = 0;
        r->at++;
        if (r->at < r->size && (r->text[r->at] == '+' || r->text[r->at] == '-')) r->at++;
        const size_t digits = r->at;
        while (r->at < r->size && r->text[r->at] >= '0' && r->text[r->at] <= '9') r->at++;
        if (r->at == digits) {
            fail(r, "invalid number");
            return;
        }
    }
    char copy[64];
    const size_t n = r->at - start;
    if (n >= sizeof copy) {
        fail(r, "number longer than %zu characters", sizeof copy - 1);
        return;
    }
    memcpy(copy, r->text + start, n);
    copy[n] = 0;
    node->number = strtod(copy, NULL);
    if (integer) {
        errno = 0;
        const long long value = strtoll(copy, NULL, 10);
        if (errno == 0) {
            node->is_integer = 1;
            node->integer = value;
        }
    }
}

static pynn_json *parse_value(reader *r, int depth);

static int append(reader *r, pynn_json *node, pynn_json *item, char *key, size_t *capacity)
{
    if (node->length == *capacity) {
        const size_t grown = *capacity ? 2 * *capacity : 4;
        pynn_json **items = realloc(node->items, grown * sizeof *items);
        if (items) node->items = items;
        char **keys = items && node->kind == PYNN_JSON_OBJECT ? realloc(node->keys, grown * sizeof *keys)
                                                                : node->keys;
        if (!items || (node->kind == PYNN_JSON_OBJECT && !keys)) {
            fail(r, "out of memory");
            return 0;
        }
        node->keys = keys;
        *capacity = grown;
    }
    node->items[node->length] = item;
    if (node->kind == PYNN_JSON_OBJECT)
        node->keys[node->length] = key;
    node->length++;
    return 1;
}

static void parse_container(reader *r, pynn_json *node, int depth)
{
    const char close = node->kind == PYNN_JSON_ARRAY ? ']' : '}';
    size_t capacity = 0;
    r->at++;
    skip_space(r);
    if (r->at < r->size && r->text[r->at] == close) {
        r->at++;
        return;
    }
    for (;;) {
        char *key = NULL;
        if (node->kind == PYNN_JSON_OBJECT) {
            size_t key_length;
            skip_space(r);
            if (r->at >= r->size || r->text[r->at] != '"') {
                fail(r, "expected a string key");
                return;
            }
            key = parse_string(r, &key_length);
            if (!key)
                return;
            for (size_t i = 0; i < node->length; i++)
                if (!strcmp(node->keys[i], key)) {
                    fail(r, "duplicate key \"%.60s\"", key);
                    free(key);
                    return;
                }
            skip_space(r);
            if (r->at >= r->size || r->text[r->at] != ':') {
                free(key);
                fail(r, "expected ':'");
                return;
            }
            r->at++;
        }
        pynn_json *item = parse_value(r, depth + 1);
        if (!item) {
            free(key);
            return;
        }
        if (!append(r, node, item, key, &capacity)) {
            free(key);
            pynn_json_free(item);
            return;
        }
        skip_space(r);
        if (r->at < r->size && r->text[r->at] == ',') {
            r->at++;
            continue;
        }
        if (r->at < r->size && r->text[r->at] == close) {
            r->at++;
            return;
        }
        fail(r, "expected ',' or '%c'", close);
        return;
    }
}

static pynn_json *parse_value(reader *r, int depth)
{
    if (depth > PYNN_JSON_MAX_DEPTH) {
        fail(r, "nested deeper than %d levels", PYNN_JSON_MAX_DEPTH);
        return NULL;
    }
    skip_space(r);
    if (r->at >= r->size) {
        fail(r, "unexpected end");
        return NULL;
    }
    pynn_json *node = NULL;
    const char c = r->text[r->at];
    if (c == '{' || c == '[') {
        node = new_node(r, c == '{' ? PYNN_JSON_OBJECT : PYNN_JSON_ARRAY);
        if (node)
            parse_container(r, node, depth);
    } else if (c == '"') {
        node = new_node(r, PYNN_JSON_STRING);
        if (node)
            node->string = parse_string(r, &node->length);
    } else if (c == 'n') {
        node = new_node(r, PYNN_JSON_NULL);
        literal(r, "null");
    } else if (c == 't') {
        node = new_node(r, PYNN_JSON_TRUE);
        literal(r, "true");
    } else if (c == 'f') {
        node = new_node(r, PYNN_JSON_FALSE);
        literal(r, "false");
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        node = new_node(r, PYNN_JSON_NUMBER);
        if (node)
            parse_number(r, node);
    } else {
        fail(r, "unexpected character 0x%02x", (unsigned char)c);
    }
    if (r->failed) {
        pynn_json_free(node);
        return NULL;
    }
    return node;
}

pynn_json *pynn_json_parse(const char *text, size_t size, char *err, size_t err_len)
{
    reader r = {text, size, 0, 0, err, err_len, 0};
    pynn_json *root = parse_value(&r, 0);
    if (root) {
        skip_space(&r);
        if (r.at != size) {
            fail(&r, "trailing characters");
            pynn_json_free(root);
            root = NULL;
        }
    }
    return root;
}

void pynn_json_free(pynn_json *value)
{
    if (!value)
        return;
    for (size_t i = 0; i < value->length && value->items; i++) {
        pynn_json_free(value->items[i]);
        if (value->keys)
            free(value->keys[i]);
    }
    free(value->items);
    free(value->keys);
    free(value->string);
    free(value);
}

const pynn_json *pynn_json_get(const pynn_json *object, const char *key)
{
    if (!object || object->kind != PYNN_JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < object->length; i++)
        if (!strcmp(object->keys[i], key))
            return object->items[i];
    return NULL;
}

int pynn_json_int(const pynn_json *value, int64_t *out)
{
    if (!value || value->kind != PYNN_JSON_NUMBER || !value->is_integer)
        return 0;
    *out = value->integer;
    return 1;
}

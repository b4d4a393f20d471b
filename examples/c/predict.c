/* Classify CSV rows with a model saved by pynn, without Python.
 *
 *   predict model.safetensors < rows.csv
 *
 * Each stdin line holds one sample's values (the model's input shape,
 * flattened), separated by commas; each output line is the class with the
 * highest score. Rows are scored in batches of up to 256. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pynn.h"

#define BATCH 256
#define MAX_RANK 8

static int64_t product(const int64_t *shape, int rank)
{
    int64_t size = 1;
    for (int axis = 0; axis < rank; axis++)
        size *= shape[axis];
    return size;
}

/* Parses one CSV line of exactly `count` numbers into row; 0 on success. */
static int parse_row(char *line, float *row, int64_t count)
{
    char *at = line;
    for (int64_t i = 0; i < count; i++) {
        char *end;
        row[i] = strtof(at, &end);
        if (end == at)
            return -1;
        while (*end == ' ' || *end == '\t')
            end++;
        if (i + 1 < count && *end != ',')
            return -1;
        at = end + (i + 1 < count);
    }
    return *at == '\n' || *at == '\r' || *at == 0 ? 0 : -1;
}

static void print_classes(const float *y, int64_t rows, int64_t classes)
{
    for (int64_t r = 0; r < rows; r++) {
        int64_t best = 0;
        for (int64_t c = 1; c < classes; c++)
            if (y[r * classes + c] > y[r * classes + best])
                best = c;
        printf("%lld\n", (long long)best);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL < rows.csv\n", argv[0]);
        return 2;
    }
    char err[512];
    pynn_model *model = pynn_model_load(argv[1], err, sizeof err);
    if (!model) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int64_t in_shape[MAX_RANK], out_shape[MAX_RANK];
    const int in_rank = pynn_model_input_shape(model, in_shape, MAX_RANK);
    const int out_rank = pynn_model_output_shape(model, out_shape, MAX_RANK);
    if (in_rank < 0 || out_rank < 0) {
        fprintf(stderr, "%s: more than %d axes\n", argv[1], MAX_RANK);
        pynn_model_free(model);
        return 1;
    }
    const int64_t features = product(in_shape, in_rank), classes = product(out_shape, out_rank);
    float *x = malloc((size_t)(BATCH * features) * sizeof *x);
    float *y = malloc((size_t)(BATCH * classes) * sizeof *y);
    size_t capacity = 0;
    char *line = NULL;
    int64_t rows = 0, line_number = 0;
    int status = 0;
    while (x && y && getline(&line, &capacity, stdin) > 0) {
        line_number++;
        if (parse_row(line, x + rows * features, features)) {
            fprintf(stderr, "line %lld: expected %lld comma-separated numbers\n", (long long)line_number,
                    (long long)features);
            status = 1;
            break;
        }
        if (++rows == BATCH) {
            if (pynn_model_predict(model, x, rows, y, err, sizeof err)) {
                fprintf(stderr, "%s\n", err);
                status = 1;
                break;
            }
            print_classes(y, rows, classes);
            rows = 0;
        }
    }
    if (!status && rows) {
        if (pynn_model_predict(model, x, rows, y, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            status = 1;
        } else {
            print_classes(y, rows, classes);
        }
    }
    if (!x || !y) {
        fprintf(stderr, "out of memory\n");
        status = 1;
    }
    free(line);
    free(x);
    free(y);
    pynn_model_free(model);
    return status;
}

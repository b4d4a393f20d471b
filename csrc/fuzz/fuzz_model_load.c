/* Fuzzing pynn_model_load (and predict on what loads) with any bytes as the
 * model file. With clang and libFuzzer:
 *   make -C csrc fuzz          -> $(BUILD)/fuzz_model_load CORPUS_DIR
 * Built with -DPYNN_FUZZ_MAIN (any compiler, e.g. under gcc's sanitizers),
 * it runs each file named on its command line once instead. */
#define _GNU_SOURCE  /* memfd_create */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pynn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Only inputs and outputs of a sane size are run. */
#define SANE (1 << 20)

/* pynn_model_run on two samples of zeros (index 0, no padding), variable
 * axes 3 long, where the inputs and outputs are of a sane size. */
static void run_once(pynn_model *model, char *err, size_t err_len)
{
    static const size_t item[] = {sizeof(float), sizeof(int64_t), 1};
    pynn_tensor inputs[64], outputs[64];
    const int count = pynn_model_input_count(model), outs = pynn_model_output_count(model);
    int fits = count > 0 && count <= 64 && outs > 0 && outs <= 64;
    memset(inputs, 0, sizeof inputs);
    memset(outputs, 0, sizeof outputs);
    for (int i = 0; i < count && fits; i++) {
        int64_t shape[8], size = 2;
        const int rank = pynn_model_input_info(model, i, NULL, &inputs[i].dtype, shape, 8);
        fits = rank >= 0 && rank < 8;
        inputs[i].rank = rank + 1;
        inputs[i].shape[0] = 2;
        for (int axis = 0; axis < rank && fits; axis++) {
            inputs[i].shape[axis + 1] = shape[axis] < 0 ? 3 : shape[axis];
            size *= inputs[i].shape[axis + 1];
            fits = size < SANE;
        }
        fits = fits && (inputs[i].data = calloc((size_t)size + 1, item[inputs[i].dtype]));
    }
    fits = fits && !pynn_model_output_shapes(model, inputs, count, outputs, outs, err, err_len);
    for (int i = 0; i < outs && fits; i++) {
        int64_t size = 1;
        for (int axis = 0; axis < outputs[i].rank && size < SANE; axis++)
            size *= outputs[i].shape[axis];
        fits = size < SANE && (outputs[i].data = calloc((size_t)size + 1, sizeof(float)));
    }
    if (fits)
        pynn_model_run(model, inputs, count, outputs, outs, err, err_len);
    for (int i = 0; i < 64; i++) {
        free(inputs[i].data);
        free(outputs[i].data);
    }
}

/* pynn_model_predict on two samples of zeros, where it takes the model. */
static void predict_once(pynn_model *model, char *err, size_t err_len)
{
    int64_t shape[8];
    int64_t in = 2, out = 2;
    int rank = pynn_model_input_shape(model, shape, 8);
    for (int axis = 0; axis < rank; axis++)
        in *= shape[axis];
    rank = pynn_model_output_shape(model, shape, 8);
    for (int axis = 0; axis < rank; axis++)
        out *= shape[axis];
    if (in >= 0 && out >= 0 && in < SANE && out < SANE) {
        float *x = calloc((size_t)in + 1, sizeof *x), *y = calloc((size_t)out + 1, sizeof *y);
        if (x && y)
            pynn_model_predict(model, x, 2, y, err, err_len);
        free(x);
        free(y);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[512];
    const int fd = memfd_create("model", 0);
    if (fd < 0)
        return 0;
    if (write(fd, data, size) == (ssize_t)size) {
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        pynn_model *model = pynn_model_load(path, err, sizeof err);
        if (model) {
            run_once(model, err, sizeof err);
            predict_once(model, err, sizeof err);
            pynn_model_free(model);
        } else if (!memchr(err, 0, sizeof err)) {
            abort();  /* the message must be NUL-terminated */
        }
    }
    close(fd);
    return 0;
}

#ifdef PYNN_FUZZ_MAIN
int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *file = fopen(argv[i], "rb");
        if (!file)
            continue;
        fseek(file, 0, SEEK_END);
        const long size = ftell(file);
        fseek(file, 0, SEEK_SET);
        uint8_t *data = malloc(size > 0 ? (size_t)size : 1);
        if (data && fread(data, 1, (size_t)size, file) == (size_t)size)
            LLVMFuzzerTestOneInput(data, (size_t)size);
        free(data);
        fclose(file);
    }
    return 0;
}
#endif

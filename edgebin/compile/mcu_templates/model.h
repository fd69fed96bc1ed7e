/* {{model}} compiled by edgebin for {{target}}. Generated file: do not edit; see README.md and bundle.json.
 *
 * One call runs one inference. The activations live in one static arena (EDGEBIN_ARENA_BYTES, in .bss) and
 * the weights in flash, so edgebin_model_run allocates nothing and is not reentrant (one caller at a time). */
#ifndef EDGEBIN_MODEL_H_
#define EDGEBIN_MODEL_H_

#ifdef __cplusplus
extern "C" {
#endif

/* float32 input, shape {{input_shape}} (row-major), already normalised */
#define EDGEBIN_INPUT_ELEMS {{input_elems}}
/* float32 output, shape {{output_shape}} */
#define EDGEBIN_OUTPUT_ELEMS {{output_elems}}
/* the one static activation arena (.bss) */
#define EDGEBIN_ARENA_BYTES {{arena_bytes}}
/* kernel scratch in runtime.c (.bss); 0: the kernels need none */
#define EDGEBIN_WORKSPACE_BYTES {{workspace_bytes}}
/* constants in flash */
#define EDGEBIN_WEIGHTS_BYTES {{weights_bytes}}
{{quant_params}}
/* Runs the model on `input` (EDGEBIN_INPUT_ELEMS floats) and writes EDGEBIN_OUTPUT_ELEMS floats to `output`.
 * Returns 0, or -k when the k-th kernel reports an error (only a missing workspace can cause one). */
int edgebin_model_run(const float* input, float* output);

/* The name of the compiled model (its ONNX file name). */
const char* edgebin_model_name(void);

#ifdef __cplusplus
}
#endif

#endif /* EDGEBIN_MODEL_H_ */

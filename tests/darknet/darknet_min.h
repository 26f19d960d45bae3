/* The types, fields and declarations darknet_excerpt.c uses, with darknet's names
   (include/darknet.h declares many more); the rest of darknet is not needed. */
#ifndef DARKNET_MIN_H
#define DARKNET_MIN_H
#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { float x, y, w, h; } box;

typedef struct {
    int id;
    float x, y, w, h;
    float left, right, top, bottom;
} box_label;

typedef struct layer {
    int batch, inputs, outputs, truths;
    int n, side, classes, coords;
    int rescore, softmax, sqrt, forced, random;
    float coord_scale, object_scale, noobject_scale, class_scale;
    float *output, *delta, *cost;
} layer;
typedef layer detection_layer;

typedef struct network {
    float *input, *truth;
    int train;
    size_t *seen;
} network;

void find_replace(char *str, char *orig, char *rep, char *output);
void top_k(float *a, int n, int k, int *index);
void file_error(char *s);
float constrain(float min, float max, float a);
float mag_array(float *a, int n);
void softmax(float *input, int n, float temp, int stride, float *output);
box float_to_box(float *f, int stride);
float overlap(float x1, float w1, float x2, float w2);
float box_intersection(box a, box b);
float box_union(box a, box b);
float box_iou(box a, box b);
float box_rmse(box a, box b);
box_label *read_boxes(char *filename, int *n);
void randomize_boxes(box_label *b, int n);
void correct_boxes(box_label *boxes, int n, float dx, float dy, float sx, float sy, int flip);
void fill_truth_region(char *path, float *truth, int classes, int num_boxes, int flip,
                       float dx, float dy, float sx, float sy);
void forward_detection_layer(const detection_layer l, network net);
#endif

/* darknet's detection layer on given predictions and label files, as a YOLOv1 cfg
   sets it up ([detection] with sqrt=1, softmax=0, coord_scale=5, noobject_scale=.5,
   object_scale=1, class_scale=1; make_detection_layer's sizes):

     harness S B C rescore pred.bin list.txt delta.bin truth.bin

   pred.bin: N x S*S*(5B+C) float32 in darknet's layout; list.txt: N image paths,
   whose labels darknet finds by its own rule (images -> labels, .jpg -> .txt).
   Writes l.delta and the truth darknet built (float32) and prints *l.cost. */
#include "darknet_min.h"

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: harness S B C rescore pred.bin list.txt delta.bin truth.bin\n");
        return 2;
    }
    int S = atoi(argv[1]), B = atoi(argv[2]), C = atoi(argv[3]);
    static char paths[1024][1024];
    int N = 0;
    FILE *fl = fopen(argv[6], "r");
    if (!fl) return 3;
    while (N < 1024 && fscanf(fl, "%1023s", paths[N]) == 1) ++N;
    fclose(fl);

    layer l = {0};
    l.batch = N; l.n = B; l.side = S; l.classes = C; l.coords = 4;
    l.inputs = l.outputs = S * S * ((1 + l.coords) * l.n + l.classes);
    l.truths = S * S * (1 + l.coords + l.classes);
    l.rescore = atoi(argv[4]);
    l.sqrt = 1; l.softmax = 0; l.forced = 0; l.random = 0;
    l.coord_scale = 5; l.noobject_scale = .5; l.object_scale = 1; l.class_scale = 1;
    l.cost = calloc(1, sizeof(float));
    l.output = calloc(N * l.outputs, sizeof(float));
    l.delta = calloc(N * l.outputs, sizeof(float));
    srand(0);  /* as make_detection_layer does */

    float *pred = calloc(N * l.inputs, sizeof(float));
    FILE *fp = fopen(argv[5], "rb");
    if (!fp || fread(pred, sizeof(float), N * l.inputs, fp) != (size_t)(N * l.inputs)) return 4;
    fclose(fp);
    float *truth = calloc(N * l.truths, sizeof(float));
    for (int b = 0; b < N; ++b) {
        fill_truth_region(paths[b], truth + b * l.truths, C, S, 0, 0, 0, 1, 1);
    }
    size_t seen = 0;
    network net = {0};
    net.input = pred; net.truth = truth; net.train = 1; net.seen = &seen;
    forward_detection_layer(l, net);

    FILE *fo = fopen(argv[7], "wb");
    fwrite(l.delta, sizeof(float), N * l.outputs, fo);
    fclose(fo);
    FILE *ft = fopen(argv[8], "wb");
    fwrite(truth, sizeof(float), N * l.truths, ft);
    fclose(ft);
    printf("%.9g\n", *l.cost);
    return 0;
}

// segment: label a float32 raw volume with a Python-trained cunet UNet.
//
//   segment MODEL.safetensors INPUT.raw D H W OUTPUT.raw
//
// INPUT.raw: float32, C order, shape (D, H, W) (or (C, D, H, W) for a model with C > 1 input
// channels). A 2D model is applied slice by slice along the first axis (each slice (H, W));
// a 3D model to the whole volume. OUTPUT.raw: uint8 labels, shape (D, H, W).
// Build: g++ -O2 -std=c++20 -fopenmp -I. examples/cpp/segment.cpp -o segment
// Errors: one line on stderr, exit status 1 (2 for bad usage).
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

#include "bindings/cunet_runner.h"

static int64_t parse_size(const char* name, const char* s) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(s, &end, 10);
    if (errno || !end || *end || end == s || v < 1 || v > (1LL << 20))
        throw std::runtime_error(std::string("argument ") + name + ": expected a positive integer size, got '" + s + "'");
    return v;
}

int main(int argc, char** argv) {
    if (argc != 7) {
        std::fprintf(stderr, "usage: segment MODEL.safetensors INPUT.raw D H W OUTPUT.raw\n");
        return 2;
    }
    try {
        const int64_t D = parse_size("D", argv[3]), H = parse_size("H", argv[4]), W = parse_size("W", argv[5]);
        const cunet::Checkpoint ck = cunet::load_safetensors(argv[1]);
        const cunet::UNet2D3D net(ck);
        if (net.out_channels > 256) throw std::runtime_error("model has more than 256 classes: labels do not fit uint8");
        const int64_t C = net.in_channels, S = H * W;
        if (D * S > (int64_t(1) << 34) / C) throw std::runtime_error("volume too large");
        const std::string in = argv[2];
        std::ifstream f(in, std::ios::binary);
        if (!f) throw std::runtime_error("input '" + in + "': file not found or not readable");
        f.seekg(0, std::ios::end);
        const int64_t bytes = int64_t(f.tellg());
        const int64_t want = C * D * S * int64_t(sizeof(float));
        if (bytes != want)
            throw std::runtime_error("input '" + in + "': " + std::to_string(bytes) + " bytes, expected " +
                                     std::to_string(want) + " (float32 " + (C > 1 ? std::to_string(C) + "x" : "") +
                                     std::to_string(D) + "x" + std::to_string(H) + "x" + std::to_string(W) + ")");
        f.seekg(0, std::ios::beg);
        std::vector<float> x(size_t(C * D * S));
        if (!f.read(reinterpret_cast<char*>(x.data()), want)) throw std::runtime_error("input '" + in + "': read failed");

        std::vector<uint8_t> out(size_t(D * S));
        if (net.dims == 3) {
            const auto labels = net.labels(net.forward(x.data(), 1, D, H, W), 1);
            for (size_t i = 0; i < out.size(); ++i) out[i] = uint8_t(labels[i]);
        } else {
            const int64_t batch = 8;   // slices per forward pass
            for (int64_t d0 = 0; d0 < D; d0 += batch) {
                const int64_t n = std::min(batch, D - d0);
                std::vector<float> xb(size_t(n * C * S));   // (n, C, H, W) from (C, D, H, W)
                for (int64_t i = 0; i < n; ++i)
                    for (int64_t c = 0; c < C; ++c)
                        std::copy_n(x.data() + (c * D + d0 + i) * S, S, xb.data() + (i * C + c) * S);
                const auto labels = net.labels(net.forward(xb.data(), n, H, W), n);
                for (int64_t i = 0; i < n * S; ++i) out[size_t(d0 * S + i)] = uint8_t(labels[size_t(i)]);
            }
        }
        const std::string outp = argv[6];
        std::ofstream o(outp, std::ios::binary);
        if (!o || !o.write(reinterpret_cast<const char*>(out.data()), std::streamsize(out.size())))
            throw std::runtime_error("output '" + outp + "': cannot write");
    } catch (const std::exception& e) {
        std::string msg = e.what();
        for (char& c : msg)
            if (c == '\n' || c == '\r') c = ' ';
        std::fprintf(stderr, "segment: error: %s\n", msg.c_str());
        return 1;
    }
    return 0;
}

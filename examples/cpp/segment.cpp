// segment: label a volume with a Python-trained cunet UNet.
//
//   segment MODEL.safetensors INPUT.nii[.gz] OUTPUT.nii[.gz]
//   segment MODEL.safetensors INPUT.raw D H W OUTPUT.raw
//
// NIfTI mode: the volume's axes are X, Y, Z in NIfTI order (a 4th axis = channels). It is
// normalised as the checkpoint's "cunet.extra" metadata key "normalization" says (as
// cunet.data.normalize, per channel; no key: no normalisation). A 2D model runs slice by
// slice along the axis it was trained along, "cunet.extra" key "axis" (0 = X, 1 = Y, 2 = Z;
// no key: 2), as `cunet predict` (cunet.infer.predict_volume_2d) does; a 3D model on the
// whole volume. Each slice (or the volume) is padded with zeros to a multiple of 2**depth
// (centred, as cunet.infer does) and cropped back. OUTPUT: uint8 labels on the input grid
// (the input header, qform/sform included). .nii.gz needs zlib (-DCUNET_WITH_ZLIB -lz).
//
// Raw mode:
// INPUT.raw: float32, C order, shape (D, H, W) (or (C, D, H, W) for a model with C > 1 input
// channels). A 2D model is applied slice by slice along the first axis (each slice (H, W);
// raw volumes carry no axis names, so "axis" does not apply); a 3D model to the whole
// volume. OUTPUT.raw: uint8 labels, shape (D, H, W). No normalisation.
//
// Build: CMake (CUNET_BUILD_EXAMPLES, or a project of its own: find_package(cunet), target
// cunet::cunet, plus ZLIB::ZLIB and CUNET_WITH_ZLIB for .nii.gz), or by hand against libcunet
// (L = $(python -m cunet.cmake --lib)):   g++ -O2 -std=c++20 -I$(python -m cunet.cmake --include)
//   examples/cpp/segment.cpp $L -Wl,-rpath,$(dirname $L) -o segment   (+ -DCUNET_WITH_ZLIB -lz)
// The same program runs on the GPU when libcunet is the CUDA build.
// Errors: one line on stderr, exit status 1 (2 for bad usage).
#include <algorithm>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

#include "bindings/cunet_runner.h"
#include "examples/cpp/nifti.h"

static int64_t parse_size(const char* name, const char* s) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(s, &end, 10);
    if (errno || !end || *end || end == s || v < 1 || v > (1LL << 20))
        throw std::runtime_error(std::string("argument ") + name + ": expected a positive integer size, got '" + s + "'");
    return v;
}

// ---- normalisation, mirroring cunet/data/transforms.py normalize()
struct Norm {
    std::string method = "zscore", mask = "all";
    bool clip = true;
    double lo = 0.5, hi = 99.5;
};

// The checkpoint's "cunet.extra" metadata (JSON object; null when there is none).
static cunet::json::Value read_extra(const cunet::Checkpoint& ck) {
    const auto it = ck.metadata.find("cunet.extra");
    if (it == ck.metadata.end()) return {};
    const std::string where = "checkpoint '" + ck.path + "': metadata 'cunet.extra' ";
    cunet::json::Value extra;
    try {
        extra = cunet::json::parse(it->second);
    } catch (const std::exception& e) {
        throw std::runtime_error(where + "is not valid JSON (" + e.what() + ")");
    }
    if (extra.type != cunet::json::Value::Object) throw std::runtime_error(where + "is not a JSON object");
    return extra;
}

// "axis": the spatial axis a 2D model was trained along (cunet train --axis); 2 when absent.
static int read_axis(const cunet::Checkpoint& ck, const cunet::json::Value& extra) {
    const cunet::json::Value* v = extra.type == cunet::json::Value::Object ? extra.find("axis") : nullptr;
    if (!v) return 2;
    int64_t a;
    if (!v->as_int(a) || a < 0 || a > 2)
        throw std::runtime_error("checkpoint '" + ck.path + "': metadata 'cunet.extra' 'axis': expected 0, 1 or 2, got " +
                                 (v->type == cunet::json::Value::Number || v->type == cunet::json::Value::String
                                      ? cunet::quoted(v->str) : std::string("a non-number")));
    return int(a);
}

// "normalization" of "cunet.extra"; false when there is none.
static bool read_normalization(const cunet::Checkpoint& ck, const cunet::json::Value& extra, Norm& n) {
    if (extra.type != cunet::json::Value::Object) return false;
    const std::string where = "checkpoint '" + ck.path + "': metadata 'cunet.extra' ";
    const cunet::json::Value* cfg = extra.find("normalization");
    if (!cfg || cfg->type == cunet::json::Value::Null) return false;
    if (cfg->type != cunet::json::Value::Object) throw std::runtime_error(where + "'normalization' is not an object");
    for (const auto& kv : cfg->obj) {
        const std::string& k = kv.first;
        const cunet::json::Value& v = kv.second;
        if (k == "method" || k == "mask") {
            if (v.type != cunet::json::Value::String) throw std::runtime_error(where + "normalization '" + k + "' is not a string");
            const bool ok = k == "method" ? (v.str == "zscore" || v.str == "percentile" || v.str == "none")
                                          : (v.str == "all" || v.str == "nonzero");
            if (!ok) throw std::runtime_error(where + "normalization '" + k + "': unknown value '" + v.str + "'");
            (k == "method" ? n.method : n.mask) = v.str;
        } else if (k == "clip") {
            if (v.type == cunet::json::Value::Null) {
                n.clip = false;
                continue;
            }
            bool ok = v.type == cunet::json::Value::Array && v.arr.size() == 2 &&
                      v.arr[0].type == cunet::json::Value::Number && v.arr[1].type == cunet::json::Value::Number;
            if (ok) {
                n.lo = v.arr[0].num, n.hi = v.arr[1].num;
                ok = 0 <= n.lo && n.lo < n.hi && n.hi <= 100;
            }
            if (!ok) throw std::runtime_error(where + "normalization 'clip': expected null or [lo, hi] with 0 <= lo < hi <= 100");
        } else {
            throw std::runtime_error(where + "normalization: unknown key '" + k + "'");
        }
    }
    if (n.method == "percentile" && !n.clip)
        throw std::runtime_error(where + "normalization: method 'percentile' needs 'clip' percentiles");
    return true;
}

// numpy.percentile(sorted, q) with the default 'linear' method, computed as NumPy does.
static double percentile(const std::vector<double>& sorted, double q) {
    const double n = double(sorted.size()), p = q / 100.0;
    const double vi = n * p + (1.0 + p * -1.0) - 1.0;
    const double prev = std::floor(vi);
    const double gamma = vi - prev;
    const int64_t last = int64_t(sorted.size()) - 1;
    const int64_t i0 = std::clamp(int64_t(prev), int64_t(0), last), i1 = std::clamp(int64_t(prev) + 1, int64_t(0), last);
    const double a = sorted[size_t(i0)], b = sorted[size_t(i1)], d = b - a;
    return gamma >= 0.5 ? b - d * (1.0 - gamma) : a + d * gamma;
}

// One channel in place, by its own statistics (cunet.data.transforms._normalize_one).
static void normalize_one(float* ch, int64_t count, const Norm& n) {
    if (n.method == "none") return;
    const bool nz = n.mask == "nonzero";
    std::vector<double> vals;
    vals.reserve(size_t(count));
    for (int64_t i = 0; i < count; ++i)
        if (!nz || ch[i] != 0.f) vals.push_back(double(ch[i]));
    if (vals.empty()) return;
    std::vector<uint8_t> inside;
    if (nz) {
        inside.resize(size_t(count));
        for (int64_t i = 0; i < count; ++i) inside[size_t(i)] = ch[i] != 0.f;
    }
    double lo = 0, hi = 0;
    if (n.clip) {
        std::vector<double> s = vals;
        std::sort(s.begin(), s.end());
        lo = percentile(s, n.lo), hi = percentile(s, n.hi);
        const float flo = float(lo), fhi = float(hi);
        for (int64_t i = 0; i < count; ++i) ch[i] = std::min(std::max(ch[i], flo), fhi);
        for (double& v : vals) v = double(std::min(std::max(float(v), flo), fhi));
    }
    if (n.method == "zscore") {
        double sum = 0;
        for (double v : vals) sum += v;
        const double mean = sum / double(vals.size());
        double ss = 0;
        for (double v : vals) ss += (v - mean) * (v - mean);
        const double std_ = std::sqrt(ss / double(vals.size()));
        const float fm = float(mean), fs = float(std::max(std_, 1e-8));
        for (int64_t i = 0; i < count; ++i) ch[i] = (ch[i] - fm) / fs;
    } else {
        const float flo = float(lo), fr = float(std::max(hi - lo, 1e-8));
        for (int64_t i = 0; i < count; ++i) ch[i] = (ch[i] - flo) / fr;
    }
    if (nz)
        for (int64_t i = 0; i < count; ++i)
            if (!inside[size_t(i)]) ch[i] = 0.f;
}

// ---- NIfTI mode
static int run_nifti(const std::string& model, const std::string& in, const std::string& outp) {
    const cunet::Checkpoint ck = cunet::load_safetensors(model);
    const cunet::UNet2D3D net(ck);
    if (net.out_channels > 256) throw std::runtime_error("model has more than 256 classes: labels do not fit uint8");
    Norm norm;
    const cunet::json::Value extra = read_extra(ck);
    const bool normalise = read_normalization(ck, extra, norm);
    const int axis = read_axis(ck, extra);
    cunet::nifti::Image im = cunet::nifti::read(in);
    const int64_t X = im.nx, Y = im.ny, Z = im.nz, C = im.nc, V = X * Y * Z;
    if (C != net.in_channels)
        throw std::runtime_error("input '" + in + "': " + std::to_string(C) + " channel(s), the model expects " +
                                 std::to_string(net.in_channels));
    for (float v : im.data)
        if (!std::isfinite(v)) throw std::runtime_error("input '" + in + "': contains NaN or infinite values");
    if (normalise)
        for (int64_t c = 0; c < C; ++c) normalize_one(im.data.data() + c * V, V, norm);
    const int64_t k = int64_t(1) << net.depth;
    const auto up = [k](int64_t s) { return (s + k - 1) / k * k; };
    if (C * up(X) * up(Y) * up(Z) > (int64_t(1) << 34)) throw std::runtime_error("volume too large");
    const float* v = im.data.data();   // (C, Z, Y, X) in memory: x fastest
    std::vector<uint8_t> out(static_cast<size_t>(V));
    if (net.dims == 3) {
        const int64_t PX = up(X), PY = up(Y), PZ = up(Z), lx = (PX - X) / 2, ly = (PY - Y) / 2, lz = (PZ - Z) / 2;
        std::vector<float> x(size_t(C * PX * PY * PZ), 0.f);   // (C, X, Y, Z), C order
        for (int64_t c = 0; c < C; ++c)
            for (int64_t z = 0; z < Z; ++z)
                for (int64_t y = 0; y < Y; ++y)
                    for (int64_t xx = 0; xx < X; ++xx)
                        x[size_t(((c * PX + xx + lx) * PY + y + ly) * PZ + z + lz)] = v[((c * Z + z) * Y + y) * X + xx];
        const auto lab = net.labels(net.forward(x.data(), 1, PX, PY, PZ), 1);
        for (int64_t z = 0; z < Z; ++z)
            for (int64_t y = 0; y < Y; ++y)
                for (int64_t xx = 0; xx < X; ++xx)
                    out[size_t((z * Y + y) * X + xx)] = uint8_t(lab[size_t(((xx + lx) * PY + y + ly) * PZ + z + lz)]);
    } else {
        // Slices along `axis`; the slice's axes (a, b) are the other two in X, Y, Z order, as
        // numpy.moveaxis(volume, axis + 1, 0) gives them to cunet.infer.
        const int64_t size[3] = {X, Y, Z}, stride[3] = {1, X, X * Y};   // voxel steps in v
        const int a = axis == 0 ? 1 : 0, b = axis == 2 ? 1 : 2;
        const int64_t A = size[a], B = size[b], PA = up(A), PB = up(B), la = (PA - A) / 2, lb = (PB - B) / 2;
        const int64_t n_slices = size[axis], batch = 8, S = PA * PB;   // several slices per forward pass
        for (int64_t i0 = 0; i0 < n_slices; i0 += batch) {
            const int64_t n = std::min(batch, n_slices - i0);
            std::vector<float> xb(size_t(n * C * S), 0.f);   // (n, C, PA, PB)
            for (int64_t i = 0; i < n; ++i)
                for (int64_t c = 0; c < C; ++c)
                    for (int64_t ia = 0; ia < A; ++ia)
                        for (int64_t ib = 0; ib < B; ++ib)
                            xb[size_t((i * C + c) * S + (ia + la) * PB + ib + lb)] =
                                v[c * V + (i0 + i) * stride[axis] + ia * stride[a] + ib * stride[b]];
            const auto lab = net.labels(net.forward(xb.data(), n, PA, PB), n);
            for (int64_t i = 0; i < n; ++i)
                for (int64_t ia = 0; ia < A; ++ia)
                    for (int64_t ib = 0; ib < B; ++ib)
                        out[size_t((i0 + i) * stride[axis] + ia * stride[a] + ib * stride[b])] =
                            uint8_t(lab[size_t(i * S + (ia + la) * PB + ib + lb)]);
        }
    }
    cunet::nifti::write_labels(outp, im, out);
    return 0;
}

static int fail_exit(const std::exception& e) {
    std::string msg = e.what();
    for (char& c : msg)
        if (c == '\n' || c == '\r') c = ' ';
    std::fprintf(stderr, "segment: error: %s\n", msg.c_str());
    return 1;
}

int main(int argc, char** argv) {
    if (argc == 4 || (argc >= 3 && (cunet::nifti::detail::ends_with(argv[2], ".nii") ||
                                     cunet::nifti::detail::ends_with(argv[2], ".nii.gz")))) {
        if (argc != 4) {
            std::fprintf(stderr, "usage: segment MODEL.safetensors INPUT.nii[.gz] OUTPUT.nii[.gz]\n");
            return 2;
        }
        try {
            return run_nifti(argv[1], argv[2], argv[3]);
        } catch (const std::exception& e) {
            return fail_exit(e);
        }
    }
    if (argc != 7) {
        std::fprintf(stderr, "usage: segment MODEL.safetensors INPUT.nii[.gz] OUTPUT.nii[.gz]\n"
                             "       segment MODEL.safetensors INPUT.raw D H W OUTPUT.raw\n");
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
        return fail_exit(e);
    }
    return 0;
}

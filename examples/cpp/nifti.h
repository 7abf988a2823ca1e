// nifti.h: a minimal NIfTI-1 reader/writer for the segment example (header-only).
//
//   cunet::nifti::Image im = cunet::nifti::read("t1.nii.gz");   // float32 voxels, scl applied
//   cunet::nifti::write_labels("seg.nii.gz", im, labels);      // uint8, on the input grid
//
// Reads single-file NIfTI-1 (.nii, and .nii.gz when compiled with -DCUNET_WITH_ZLIB and
// linked with zlib), either byte order; datatypes uint8, int16, int32, float32, float64;
// 3 or 4 dims (the 4th = channels). Voxels are kept in file order (x fastest, then y, z,
// channel). The writer copies the input header (so qform/sform and pixdim are unchanged),
// sets datatype uint8, bitpix 8, scl_slope 1 / scl_inter 0, dim[0] = 3, and drops
// extensions. Every error is a std::runtime_error naming the file and the problem.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef CUNET_WITH_ZLIB
#include <zlib.h>
#endif

namespace cunet {
namespace nifti {

struct Image {
    std::string path;
    unsigned char header[348] = {};   // the input header, native byte order
    int64_t nx = 1, ny = 1, nz = 1, nc = 1;
    std::vector<float> data;          // nc * nz * ny * nx, x fastest
};

namespace detail {

inline bool ends_with(const std::string& s, const std::string& t) {
    return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

[[noreturn]] inline void fail(const std::string& path, const std::string& what) {
    throw std::runtime_error("nifti '" + path + "': " + what);
}

inline std::vector<unsigned char> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail(path, "file not found or not readable");
    std::vector<unsigned char> raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (f.bad()) fail(path, "read failed");
    if (!ends_with(path, ".gz")) return raw;
#ifdef CUNET_WITH_ZLIB
    std::vector<unsigned char> out;
    z_stream zs{};
    if (inflateInit2(&zs, 15 + 32) != Z_OK) fail(path, "zlib init failed");
    zs.next_in = raw.data();
    zs.avail_in = uInt(raw.size());
    unsigned char buf[1 << 16];
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
        zs.next_out = buf;
        zs.avail_out = sizeof buf;
        rc = inflate(&zs, Z_NO_FLUSH);
        if (rc != Z_OK && rc != Z_STREAM_END) {
            inflateEnd(&zs);
            fail(path, rc == Z_BUF_ERROR ? "truncated gzip data" : "corrupt gzip data");
        }
        out.insert(out.end(), buf, buf + (sizeof buf - zs.avail_out));
        if (out.size() > (size_t(1) << 36)) {
            inflateEnd(&zs);
            fail(path, "decompressed size is absurd");
        }
        if (rc != Z_STREAM_END && zs.avail_in == 0 && zs.avail_out != 0) {
            inflateEnd(&zs);
            fail(path, "truncated gzip data");
        }
    }
    inflateEnd(&zs);
    return out;
#else
    fail(path, ".nii.gz needs zlib: rebuild with -DCUNET_WITH_ZLIB and -lz (or gunzip the file)");
#endif
}

inline void write_file(const std::string& path, const std::vector<unsigned char>& bytes) {
    if (ends_with(path, ".gz")) {
#ifdef CUNET_WITH_ZLIB
        gzFile g = gzopen(path.c_str(), "wb6");
        if (!g) fail(path, "cannot open for writing");
        size_t done = 0;
        while (done < bytes.size()) {
            const unsigned n = unsigned(std::min<size_t>(bytes.size() - done, size_t(1) << 30));
            if (gzwrite(g, bytes.data() + done, n) != int(n)) {
                gzclose(g);
                fail(path, "write failed");
            }
            done += n;
        }
        if (gzclose(g) != Z_OK) fail(path, "write failed");
        return;
#else
        fail(path, ".nii.gz needs zlib: rebuild with -DCUNET_WITH_ZLIB and -lz (or write .nii)");
#endif
    }
    std::ofstream o(path, std::ios::binary);
    if (!o || !o.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size())))
        fail(path, "cannot write");
}

template <class T> T get(const unsigned char* p) { T v; std::memcpy(&v, p, sizeof v); return v; }
template <class T> void put(unsigned char* p, T v) { std::memcpy(p, &v, sizeof v); }

inline void swap_bytes(unsigned char* p, int size) {
    for (int i = 0; i < size / 2; ++i) std::swap(p[i], p[size - 1 - i]);
}

// Byte-swap every numeric field of a NIfTI-1 header in place: (offset, element size, count).
inline void swap_header(unsigned char* h) {
    static const int fields[][3] = {
        {0, 4, 1},    {32, 4, 1},   {36, 2, 1},   {40, 2, 8},  {56, 4, 3},  {68, 2, 1},  {70, 2, 1},
        {72, 2, 1},   {74, 2, 1},   {76, 4, 8},   {108, 4, 1}, {112, 4, 1}, {116, 4, 1}, {120, 2, 1},
        {124, 4, 1},  {128, 4, 1},  {132, 4, 1},  {136, 4, 1}, {140, 4, 1}, {144, 4, 1}, {252, 2, 1},
        {254, 2, 1},  {256, 4, 6},  {280, 4, 12}};
    for (const auto& f : fields)
        for (int i = 0; i < f[2]; ++i) swap_bytes(h + f[0] + i * f[1], f[1]);
}

}  // namespace detail

inline Image read(const std::string& path) {
    using namespace detail;
    const std::vector<unsigned char> raw = read_file(path);
    Image im;
    im.path = path;
    if (raw.size() < 348) fail(path, "truncated: " + std::to_string(raw.size()) + " bytes, a NIfTI-1 header is 348");
    std::memcpy(im.header, raw.data(), 348);
    unsigned char* h = im.header;
    bool swapped = false;
    if (get<int32_t>(h) != 348) {
        unsigned char t[4];
        std::memcpy(t, h, 4);
        swap_bytes(t, 4);
        if (get<int32_t>(t) != 348)
            fail(path, "bad sizeof_hdr " + std::to_string(get<int32_t>(h)) + " (expected 348: not a NIfTI-1 file)");
        swapped = true;
        swap_header(h);
    }
    if (std::memcmp(h + 344, "n+1\0", 4) != 0) {
        if (std::memcmp(h + 344, "ni1\0", 4) == 0) fail(path, "a .hdr/.img pair is not supported (single-file .nii only)");
        fail(path, "bad magic (expected 'n+1')");
    }
    const int16_t ndim = get<int16_t>(h + 40);
    if (ndim < 3 || ndim > 4) fail(path, "unsupported dim[0] = " + std::to_string(ndim) + " (expected 3 or 4)");
    int64_t n[4];
    for (int i = 0; i < 4; ++i) {
        const int16_t d = i < ndim ? get<int16_t>(h + 42 + 2 * i) : int16_t(1);
        if (d < 1) fail(path, "bad dim[" + std::to_string(i + 1) + "] = " + std::to_string(d));
        n[i] = d;
    }
    im.nx = n[0], im.ny = n[1], im.nz = n[2], im.nc = n[3];
    const int16_t dt = get<int16_t>(h + 70);
    int size;
    switch (dt) {
        case 2: size = 1; break;    // uint8
        case 4: size = 2; break;    // int16
        case 8: size = 4; break;    // int32
        case 16: size = 4; break;   // float32
        case 64: size = 8; break;   // float64
        default: fail(path, "unsupported datatype " + std::to_string(dt) +
                                " (supported: 2 uint8, 4 int16, 8 int32, 16 float32, 64 float64)");
    }
    const float vo = get<float>(h + 108);
    if (!(vo >= 0 && vo < 1e12f)) fail(path, "bad vox_offset");
    const int64_t off = std::max<int64_t>(int64_t(vo), 348);
    const int64_t count = im.nx * im.ny * im.nz * im.nc;
    if (int64_t(raw.size()) < off || (int64_t(raw.size()) - off) / size < count)
        fail(path, "truncated: " + std::to_string(raw.size()) + " bytes, the header says " +
                       std::to_string(off + count * size) + " (" + std::to_string(im.nx) + "x" + std::to_string(im.ny) +
                       "x" + std::to_string(im.nz) + "x" + std::to_string(im.nc) + " voxels of " +
                       std::to_string(size) + " bytes from offset " + std::to_string(off) + ")");
    float slope = get<float>(h + 112), inter = get<float>(h + 116);
    const bool scale = std::isfinite(slope) && slope != 0 && std::isfinite(inter) && !(slope == 1 && inter == 0);
    im.data.resize(size_t(count));
    const unsigned char* p = raw.data() + off;
    for (int64_t i = 0; i < count; ++i, p += size) {
        unsigned char b[8];
        std::memcpy(b, p, size_t(size));
        if (swapped) swap_bytes(b, size);
        double v;
        switch (dt) {
            case 2: v = b[0]; break;
            case 4: v = get<int16_t>(b); break;
            case 8: v = get<int32_t>(b); break;
            case 16: v = get<float>(b); break;
            default: v = get<double>(b); break;
        }
        if (scale) v = v * double(slope) + double(inter);
        im.data[size_t(i)] = float(v);
    }
    return im;
}

// labels: nx * ny * nz uint8, x fastest (like Image::data for one channel).
inline void write_labels(const std::string& path, const Image& like, const std::vector<uint8_t>& labels) {
    using namespace detail;
    const int64_t count = like.nx * like.ny * like.nz;
    if (int64_t(labels.size()) != count)
        fail(path, "label map has " + std::to_string(labels.size()) + " voxels, the grid " + std::to_string(count));
    std::vector<unsigned char> out(352 + size_t(count), 0);
    unsigned char* h = out.data();
    std::memcpy(h, like.header, 348);
    put<int16_t>(h + 40, 3);
    put<int16_t>(h + 48, 1);   // dim[4]
    for (int i = 5; i < 8; ++i) put<int16_t>(h + 40 + 2 * i, 1);
    put<int16_t>(h + 68, 0);    // intent_code: none
    put<int16_t>(h + 70, 2);    // datatype uint8
    put<int16_t>(h + 72, 8);    // bitpix
    put<float>(h + 108, 352.f);
    put<float>(h + 112, 1.f);   // scl_slope
    put<float>(h + 116, 0.f);   // scl_inter
    put<float>(h + 124, 0.f);   // cal_max
    put<float>(h + 128, 0.f);   // cal_min
    put<int32_t>(h + 140, 0);   // glmax
    put<int32_t>(h + 144, 0);   // glmin
    std::memcpy(h + 344, "n+1\0", 4);
    std::memcpy(out.data() + 352, labels.data(), labels.size());   // 348..351: no extensions
    write_file(path, out);
}

}  // namespace nifti
}  // namespace cunet

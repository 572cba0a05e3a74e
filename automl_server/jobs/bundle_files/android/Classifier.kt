// Classify one image with this bundle's model.tflite on Android (LiteRT).
//
// app/build.gradle.kts:  implementation("com.google.ai.edge.litert:litert:1.4.1")
// Kotlin 1.7 or later. Copy model.tflite, labels.json and preprocessing.json into app/src/main/assets/, then
//     val (label, probability) = Classifier(context).classify(bitmap)
// The TFLite model takes NHWC float32 input of batch 1; the image is prepared as the
// training prepared its images (preprocessing.json).
package com.example.automl

import android.content.Context
import android.graphics.Bitmap
import org.json.JSONArray
import org.json.JSONObject
import org.tensorflow.lite.Interpreter
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel
import kotlin.math.exp

class Classifier(context: Context) {
    private val interpreter = Interpreter(context.assets.openFd("model.tflite").use { fd ->
        FileInputStream(fd.fileDescriptor).channel.use { it.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength) }
    })
    private val labels = JSONArray(readAsset(context, "labels.json")).let { names -> List(names.length()) { names.getString(it) } }
    private val pre = JSONObject(readAsset(context, "preprocessing.json"))

    /** The most likely label and its probability. */
    fun classify(image: Bitmap): Pair<String, Float> {
        val height = pre.getInt("height")
        val width = pre.getInt("width")
        val channels = pre.getInt("channels")
        val scale = pre.getDouble("scale").toFloat()
        val mean = FloatArray(channels) { pre.getJSONArray("mean").getDouble(it).toFloat() }
        val std = FloatArray(channels) { pre.getJSONArray("std").getDouble(it).toFloat() }
        val scaled = Bitmap.createScaledBitmap(image, width, height, true) // bilinear
        val pixels = IntArray(width * height)
        scaled.getPixels(pixels, 0, width, 0, 0, width, height)
        val input = ByteBuffer.allocateDirect(4 * height * width * channels).order(ByteOrder.nativeOrder())
        for (p in pixels) { // row by row, channels last (NHWC)
            val r = ((p shr 16) and 0xFF).toFloat()
            val g = ((p shr 8) and 0xFF).toFloat()
            val b = (p and 0xFF).toFloat()
            // Grayscale as Pillow's convert("L") makes it (ITU-R 601-2 luma).
            val values = if (channels == 3) floatArrayOf(r, g, b) else floatArrayOf(0.299f * r + 0.587f * g + 0.114f * b)
            for (c in 0 until channels) input.putFloat((values[c] * scale - mean[c]) / std[c])
        }
        input.rewind()
        val logits = Array(1) { FloatArray(labels.size) }
        interpreter.run(input, logits)
        val top = logits[0].max()
        val e = logits[0].map { exp(it - top) }
        val best = e.indices.maxBy { e[it] }
        return labels[best] to e[best] / e.sum()
    }
}

private fun readAsset(context: Context, name: String): String =
    context.assets.open(name).bufferedReader().use { it.readText() }

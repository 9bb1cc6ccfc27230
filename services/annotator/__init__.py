"""The annotator: face detection and 68 landmarks (dlib, optional FAN), exact FFHQ alignment,
BiSeNet face parsing (PyTorch or ONNX Runtime), SFHQ's 110-point landmark set, overlays.

Modules (import them directly; this package imports nothing heavy on its own):

* `detect`: `FaceDetector`, `LandmarkPredictor`, `FaceLandmarker`, `NoFaceFound`
* `align`: `align_face`, `ffhq_transform`, `map_landmarks`, `canonical_face_box`
* `parsing`: `BiSeNet`, `load_parser` -> `FaceParser` (`logits`, `parse`)
* `landmarks110`: `extend_landmarks`, `LANDMARK_GROUPS` (order documented in docs/landmarks.md)
* `fan`: FAN 68-point network (used when its checkpoint is registered)
* `overlay`: `render_overlay`; `formats`: SFHQ's PNG / NPZ files
* `random_weights`: random checkpoints in the official layouts (tests, demos)
* `service`: gRPC servicer and the `align` / `annotate` stage handlers
"""

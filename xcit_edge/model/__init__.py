"""The model: the architecture table (`zoo`), XCiT in Keras 3 (`xcit`), checkpoint reading (`checkpoint`) and
the timm key map (`weights`), SavedModel export (`savedmodel`) and the `build` command (`build`).

Nothing is imported here: `zoo` is read before TensorFlow loads (the CLI checks names first), and `xcit`
imports Keras.
"""

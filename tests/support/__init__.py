"""Test support code: the independent references (seeded timm models) the tests and benchmarks compare with."""

"""facenet_platform.index"""

"""facenet_platform.serve"""

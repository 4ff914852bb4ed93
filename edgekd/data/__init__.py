"""edgekd.data"""

<?php
// n bytes (?n=): a 251-byte unit repeated, byte i being (i % 251) * 31 + n, modulo 256.
$n = (int)($_GET['n'] ?? 0);
$unit = '';
for ($i = 0; $i < 251; $i++) {
    $unit .= chr(($i * 31 + $n) & 255);
}
header('Content-Type: application/octet-stream');
echo substr(str_repeat($unit, intdiv($n, 251) + 1), 0, $n);

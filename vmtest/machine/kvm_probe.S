    .code16
    .globl _start
_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    lgdtl gdt_desc
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $pm32

    .code32
pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    /* page tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD): identity-map the first 2 MiB */
    movl $0x1000, %edi
    xorl %eax, %eax
    movl $0x3000/4, %ecx
    rep stosl
    movl $0x2003, 0x1000
    movl $0x3003, 0x2000
    movl $0x0083, 0x3000
    movl %cr4, %eax
    orl $0x20, %eax          /* PAE */
    movl %eax, %cr4
    movl $0x1000, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx   /* EFER */
    rdmsr
    orl $0x100, %eax         /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax    /* PG */
    movl %eax, %cr0
    ljmpl $0x18, $lm64

    .code64
lm64:
    movb $0x2a, %al
    outb %al, $0xf4
1:  hlt
    jmp 1b

    .p2align 3
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff   /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff   /* 0x10: 32-bit data */
    .quad 0x00af9a000000ffff   /* 0x18: 64-bit code */
gdt_desc:
    .word gdt_desc - gdt - 1
    .long gdt

    .org 510
    .byte 0x55, 0xaa
